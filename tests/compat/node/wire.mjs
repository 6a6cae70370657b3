// A passive record of the gRPC calls the official Node client makes, for the test reports.
//
// The client's behaviour is left as it is: each method of the stubs that google-gax creates is
// wrapped on the stub instance so that calls are counted and their outcome noted, and nothing
// else happens. For StreamingPull the record keeps, per stream, the first request the client
// wrote (subscription, flow-control settings), how many requests and responses went each way, how
// many messages came in them, and the status the stream ended with. No listener is added to a
// stream (a 'data' listener would change its flow), only `write` and `emit` are observed.
//
// It also keeps a lower bound of what the server counts as outstanding on each stream: messages
// delivered on it whose ack (unary Acknowledge, or ModifyAckDeadline 0 = nack) the client has not
// sent yet. The server cannot have seen an ack that was not sent, so when a response arrives this
// count plus the new messages must stay within the stream's max_outstanding_messages if the server
// keeps to it (`maxOutstanding` per stream).

import {createRequire} from 'node:module';

const require = createRequire(import.meta.url);
// The google-gax instance the Pub/Sub client itself loads (resolved from the client's own path).
const gax = createRequire(require.resolve('@google-cloud/pubsub'))('google-gax');

const calls = {}; // RPC name -> {calls, ok, errors: {code: count}, ids: count of ack/modack ids}
const modAckSeconds = {}; // ack deadline seconds sent by ModifyAckDeadline -> number of ack ids
const streams = []; // one entry per StreamingPull call
let openStreams = 0;
const deliveredOn = new Map(); // ack id -> the stream entry it came on, until its ack is sent
let maxOpenStreams = 0;

function entry(rpc) {
  calls[rpc] ??= {calls: 0, ok: 0, errors: {}, ids: 0};
  return calls[rpc];
}

function plain(value) {
  // Long values (int64 fields) and Buffers become JSON-friendly.
  if (value === null || value === undefined) return value;
  if (typeof value === 'object' && typeof value.toNumber === 'function') return value.toNumber();
  if (Buffer.isBuffer(value)) return value.toString('base64');
  return value;
}

function firstRequestSummary(req) {
  return {
    subscription: req.subscription ?? null,
    streamAckDeadlineSeconds: plain(req.streamAckDeadlineSeconds) ?? null,
    maxOutstandingMessages: plain(req.maxOutstandingMessages) ?? null,
    maxOutstandingBytes: plain(req.maxOutstandingBytes) ?? null,
    clientId: req.clientId ?? null,
    protocolVersion: plain(req.protocolVersion) ?? null,
  };
}

function release(ackIds) {
  for (const id of ackIds) {
    const s = deliveredOn.get(id);
    if (s) {
      deliveredOn.delete(id);
      s.unacked -= 1;
    }
  }
}

function noteUnary(rpc, request) {
  const e = entry(rpc);
  e.calls += 1;
  if (rpc === 'Acknowledge' || rpc === 'ModifyAckDeadline') {
    const ids = (request && request.ackIds) || [];
    e.ids += ids.length;
    if (rpc === 'Acknowledge') release(ids);
    if (rpc === 'ModifyAckDeadline') {
      const secs = plain(request.ackDeadlineSeconds) ?? 0;
      modAckSeconds[String(secs)] = (modAckSeconds[String(secs)] ?? 0) + ids.length;
      if (Number(secs) === 0) release(ids);
    }
  }
  return e;
}

function wrapUnary(stub, name, rpc) {
  const original = stub[name];
  stub[name] = function (...args) {
    const e = noteUnary(rpc, args[0]);
    const at = args.findLastIndex(a => typeof a === 'function');
    if (at >= 0) {
      const callback = args[at];
      args[at] = (err, ...rest) => {
        if (err) {
          const code = String(err.code ?? 'none');
          e.errors[code] = (e.errors[code] ?? 0) + 1;
        } else {
          e.ok += 1;
        }
        return callback(err, ...rest);
      };
    }
    return original.apply(this, args);
  };
}

function wrapBidi(stub, name, rpc) {
  const original = stub[name];
  stub[name] = function (...args) {
    const e = entry(rpc);
    e.calls += 1;
    const call = original.apply(this, args);
    const s = {
      index: streams.length,
      openedAtMs: Date.now(),
      firstRequest: null,
      requests: 0,
      inStreamAckIds: 0,
      inStreamModAckIds: 0,
      responses: 0,
      messages: 0,
      unacked: 0,
      maxOutstanding: 0,
      status: null,
    };
    streams.push(s);
    openStreams += 1;
    maxOpenStreams = Math.max(maxOpenStreams, openStreams);

    const write = call.write;
    call.write = function (chunk, ...rest) {
      if (chunk && typeof chunk === 'object') {
        if (s.firstRequest === null) s.firstRequest = firstRequestSummary(chunk);
        s.requests += 1;
        s.inStreamAckIds += (chunk.ackIds || []).length;
        s.inStreamModAckIds += (chunk.modifyDeadlineAckIds || []).length;
        release(chunk.ackIds || []);
        const ids = chunk.modifyDeadlineAckIds || [];
        const secs = chunk.modifyDeadlineSeconds || [];
        release(ids.filter((_, i) => Number(plain(secs[i]) ?? -1) === 0));
      }
      return write.call(this, chunk, ...rest);
    };
    const emit = call.emit;
    call.emit = function (event, ...rest) {
      if (event === 'data' && rest[0]) {
        const received = rest[0].receivedMessages || [];
        s.responses += 1;
        s.messages += received.length;
        s.maxOutstanding = Math.max(s.maxOutstanding, s.unacked + received.length);
        for (const m of received) {
          if (m.ackId && !deliveredOn.has(m.ackId)) {
            deliveredOn.set(m.ackId, s);
            s.unacked += 1;
          }
        }
      } else if (event === 'status' && s.status === null) {
        const st = rest[0] || {};
        s.status = {code: st.code ?? null, details: st.details ?? null, afterMs: Date.now() - s.openedAtMs};
        openStreams -= 1;
        if (st.code === 0) e.ok += 1;
        else e.errors[String(st.code)] = (e.errors[String(st.code)] ?? 0) + 1;
      }
      return emit.call(this, event, ...rest);
    };
    return call;
  };
}

function instrument(stub) {
  const service = stub && stub.constructor && stub.constructor.service;
  if (!service) return;
  const seen = new Set();
  for (const [name, def] of Object.entries(service)) {
    const rpc = String(def.path).split('/').pop();
    const names = [name, def.originalName].filter(n => n && !seen.has(n) && typeof stub[n] === 'function');
    for (const n of names) {
      seen.add(n);
      if (def.requestStream && def.responseStream) wrapBidi(stub, n, rpc);
      else if (!def.requestStream && !def.responseStream) wrapUnary(stub, n, rpc);
    }
  }
}

let installed = false;

/** Wraps every stub google-gax creates from now on. Call before the first client is made. */
export function installWireRecorder() {
  if (installed) return;
  installed = true;
  const createStub = gax.GrpcClient.prototype.createStub;
  gax.GrpcClient.prototype.createStub = async function (...args) {
    const stub = await createStub.apply(this, args);
    try {
      instrument(stub);
    } catch (err) {
      process.stderr.write(`wire recorder: could not instrument a stub: ${err}\n`);
    }
    return stub;
  };
}

/** How many StreamingPull calls the client has opened so far. */
export function streamsOpened() {
  return streams.length;
}

/** What was recorded so far, as plain JSON. */
export function wireReport() {
  return {
    rpcs: structuredClone(calls),
    modAckDeadlineSeconds: structuredClone(modAckSeconds),
    streamingPull: {
      opened: streams.length,
      maxConcurrent: maxOpenStreams,
      openNow: openStreams,
      streams: structuredClone(streams),
    },
  };
}
