#!/usr/bin/env node
// A Pub/Sub back end written the way users write one with Google's official Node client
// (@google-cloud/pubsub): `new PubSub({projectId})`, with the server taken from
// PUBSUB_EMULATOR_HOST=host:port exactly as the client reads it (plaintext gRPC, no credentials).
//
//   node backend.mjs <scenario> [--project P] [--count N] [--subscription projects/P/subscriptions/S]
//                               [--timeout SECONDS] [--target ferrocore|emulator]
//
// Scenarios (one per run):
//   roundtrip  create a topic and a subscription, publish N messages with attributes (half before
//              the subscriber opens, half while it runs), receive them all with
//              subscription.on('message') and ack each; checks data, attributes, message ids and
//              publish times, and that no message came twice.
//   nack       messages nacked once come again at once with the same message id (and a new ack id).
//   flow       flowControl {maxMessages: 10, allowExcessMessages: false} with a slow handler:
//              never more than 10 messages in the handler at once, and all N acked in the end.
//   errors     the canonical codes: ALREADY_EXISTS (6), NOT_FOUND (5), INVALID_ARGUMENT (3).
//   iot        receive --count messages from an existing --subscription (device telemetry) and
//              print their data (base64) and attributes.
//
// The run prints exactly one JSON line on stdout: {"scenario", "ok", "failures": [...], ...,
// "wire": {...}} where `wire` is what the client sent (see wire.mjs). Progress and diagnostics go
// to stderr. `--target emulator` marks the run as one against Google's emulator: where the
// emulator is known to depart from Google's documented API, the difference is reported under
// "quirks" instead of failing. Every run ends by itself: it gives up after --timeout seconds
// (default 60), closes the subscription and the client, and exits 0 only when `ok` is true.

import {createRequire} from 'node:module';
import {randomBytes, randomUUID} from 'node:crypto';
import {installWireRecorder, streamsOpened, wireReport} from './wire.mjs';

installWireRecorder();
const require = createRequire(import.meta.url);
const {PubSub} = require('@google-cloud/pubsub');
const CLIENT_VERSION = require('@google-cloud/pubsub/package.json').version;

// --- command line -------------------------------------------------------------------------------

function parseArgs(argv) {
  const [scenario, ...rest] = argv;
  const opts = {scenario, project: null, count: null, subscription: null, timeout: 60, target: 'ferrocore'};
  for (let i = 0; i < rest.length; i++) {
    const key = rest[i];
    const value = rest[i + 1];
    if (value === undefined) throw new Error(`${key} needs a value`);
    i += 1;
    switch (key) {
      case '--project': opts.project = value; break;
      case '--count': opts.count = Number.parseInt(value, 10); break;
      case '--subscription': opts.subscription = value; break;
      case '--timeout': opts.timeout = Number.parseFloat(value); break;
      case '--target':
        if (!['ferrocore', 'emulator'].includes(value)) throw new Error(`--target ferrocore|emulator, not ${value}`);
        opts.target = value;
        break;
      default: throw new Error(`unknown argument ${key}`);
    }
  }
  return opts;
}

// --- small helpers ------------------------------------------------------------------------------

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
const log = (...parts) => process.stderr.write(`[backend ${new Date().toISOString()}] ${parts.join(' ')}\n`);

/** A resource id of this run's own (ids must start with a letter). */
function uniqueId(prefix) {
  return `${prefix}-${randomUUID().replace(/-/g, '').slice(0, 12)}`;
}

/** The process-wide deadline of the run; waits fail once it has passed. */
let runDeadline = Infinity;

class TimeoutError extends Error {}

/** Polls `predicate` every 20 ms until it is true; throws once the run's deadline has passed.
 * `what` (a string, or a function for one that shows progress) names what was awaited. */
async function waitUntil(predicate, what, {failFast = () => null} = {}) {
  const describe = () => (typeof what === 'function' ? what() : what);
  for (;;) {
    if (predicate()) return;
    const fatal = failFast();
    if (fatal) throw new Error(`while waiting for ${describe()}: ${fatal}`);
    if (Date.now() > runDeadline) throw new TimeoutError(`timed out waiting for ${describe()}`);
    await sleep(20);
  }
}

function errorInfo(err) {
  if (!err) return null;
  return {code: err.code ?? null, message: String(err.details ?? err.message ?? err)};
}

/** Runs `fn` and returns the gRPC status code it failed with (null when it succeeded). */
async function codeOf(fn) {
  try {
    await fn();
    return {code: null, message: null};
  } catch (err) {
    return errorInfo(err);
  }
}

/** Closes something, but never waits more than `ms` for it. */
async function boundedClose(what, fn, ms = 10000) {
  let timer;
  try {
    await Promise.race([
      fn(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`closing ${what} took over ${ms} ms`)), ms);
      }),
    ]);
    return null;
  } catch (err) {
    return `${what}: ${err.message ?? err}`;
  } finally {
    clearTimeout(timer);
  }
}

/** Everything a scenario run needs, and what must be closed at its end. */
class Run {
  constructor(opts) {
    this.opts = opts;
    this.failures = [];
    this.subscriptions = [];
    this.streamErrors = [];
    this.debugMessages = [];
    this.pubsub = null;
  }

  client(projectId) {
    if (!this.pubsub) this.pubsub = new PubSub({projectId});
    return this.pubsub;
  }

  check(condition, message) {
    if (!condition) this.failures.push(message);
    return condition;
  }

  /** A subscription object with the listeners every back end needs ('error' above all). */
  subscribe(name, options, onMessage) {
    const sub = this.pubsub.subscription(name, options);
    sub.on('error', err => {
      log(`subscription error: ${err.code} ${err.message}`);
      this.streamErrors.push(errorInfo(err));
    });
    sub.on('debug', msg => {
      // e.g. "Subscriber stream 3 has ended with status 14; will be retried."
      this.debugMessages.push(String(msg.message ?? msg));
    });
    sub.on('message', onMessage);
    this.subscriptions.push(sub);
    return sub;
  }

  /** Fails a wait at once when a subscription reported an error. */
  streamFailure() {
    return this.streamErrors.length ? `subscription error ${JSON.stringify(this.streamErrors[0])}` : null;
  }

  async close() {
    const problems = [];
    for (const sub of this.subscriptions) {
      const p = await boundedClose('subscription.close()', () => sub.close());
      if (p) problems.push(p);
    }
    if (this.pubsub) {
      const p = await boundedClose('pubsub.close()', () => this.pubsub.close());
      if (p) problems.push(p);
    }
    return problems;
  }
}

/** Publishes `messages` ({data, attributes}) through one topic object; returns the message ids. */
async function publishAll(topic, messages) {
  return Promise.all(messages.map(m => topic.publishMessage(m)));
}

/** Deliveries of a subscription as plain records, plus their checks. */
class Deliveries {
  constructor() {
    this.list = [];
    this.byId = new Map();
  }

  add(message) {
    const d = {
      id: message.id,
      ackId: message.ackId,
      data: Buffer.from(message.data),
      attributes: {...message.attributes},
      publishTime: message.publishTime,
      deliveryAttempt: message.deliveryAttempt,
      receivedAtMs: Date.now(),
    };
    this.list.push(d);
    if (!this.byId.has(d.id)) this.byId.set(d.id, []);
    this.byId.get(d.id).push(d);
    return d;
  }

  get distinct() {
    return this.byId.size;
  }

  duplicates() {
    const out = {};
    for (const [id, ds] of this.byId) if (ds.length > 1) out[id] = ds.length;
    return out;
  }
}

/** What every test message of a generic scenario carries: an index, some text, a binary part. */
function makeMessages(count, runTag) {
  const out = [];
  for (let i = 0; i < count; i++) {
    // Message 0 has no data at all (attributes only); the others have text and random bytes.
    const data = i === 0 ? Buffer.alloc(0) : Buffer.concat([Buffer.from(`${runTag}/${i}:`), randomBytes(16 + (i % 7))]);
    const attributes = {seq: String(i), run: runTag, kind: i % 2 ? 'odd' : 'even'};
    if (i % 10 === 3) attributes.empty = '';
    if (i % 10 === 5) attributes['unicode-ü'] = 'ψ→✓';
    out.push({data, attributes});
  }
  return out;
}

function sameAttributes(a, b) {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}

/** Publish times must be real times of this run, give or take a little clock rounding. */
function publishTimeOk(date, startedMs) {
  const t = date instanceof Date ? date.getTime() : NaN;
  return Number.isFinite(t) && t >= startedMs - 5000 && t <= Date.now() + 5000;
}

// --- scenarios ----------------------------------------------------------------------------------

async function roundtrip(run) {
  const count = run.opts.count ?? 200;
  const project = run.opts.project ?? uniqueId('proj');
  const pubsub = run.client(project);
  const startedMs = Date.now();
  const [topic] = await pubsub.createTopic(uniqueId('topic'));
  const [created] = await topic.createSubscription(uniqueId('sub'));
  const tag = uniqueId('run');
  const sent = makeMessages(count, tag);

  // Half of the messages are a backlog the five streams open onto; the rest arrive while they run.
  const before = Math.floor(count / 2);
  const ids = await publishAll(topic, sent.slice(0, before));
  log(`published ${before} before subscribing`);

  const deliveries = new Deliveries();
  const subscribedAt = Date.now();
  run.subscribe(created.name, {}, message => {
    deliveries.add(message);
    message.ack();
  });
  // The rest goes out in small batches once the client's streams are open, so that the server has
  // several streams of one subscription to hand live messages to.
  await waitUntil(() => streamsOpened() >= 5 || Date.now() - subscribedAt > 3000, 'streams to open');
  for (let i = before; i < count; i += 10) {
    ids.push(...(await publishAll(topic, sent.slice(i, Math.min(i + 10, count)))));
    await sleep(20);
  }
  log(`published ${count - before} while subscribed`);
  run.check(new Set(ids).size === count, `publish returned ${new Set(ids).size} distinct ids for ${count} messages`);

  await waitUntil(() => deliveries.distinct >= count, () => `${count} messages (got ${deliveries.distinct})`, {
    failFast: () => run.streamFailure(),
  });
  // Watch a little longer: a message handed to two streams, or not taken as acked, would show here.
  await sleep(1500);

  const expectedById = new Map(ids.map((id, i) => [id, sent[i]]));
  let contentMismatches = 0;
  let badPublishTimes = 0;
  const unknownIds = [];
  for (const d of deliveries.list) {
    const want = expectedById.get(d.id);
    if (!want) {
      unknownIds.push(d.id);
      continue;
    }
    if (!d.data.equals(want.data) || !sameAttributes(d.attributes, want.attributes)) contentMismatches += 1;
    if (!publishTimeOk(d.publishTime, startedMs)) badPublishTimes += 1;
  }
  const missing = ids.filter(id => !deliveries.byId.has(id));
  const duplicates = deliveries.duplicates();
  run.check(missing.length === 0, `${missing.length} published messages never arrived`);
  run.check(unknownIds.length === 0, `${unknownIds.length} deliveries carry ids publish never returned`);
  run.check(contentMismatches === 0, `${contentMismatches} deliveries differ from what was published`);
  run.check(badPublishTimes === 0, `${badPublishTimes} deliveries have an implausible publishTime`);
  run.check(Object.keys(duplicates).length === 0, `duplicates under prompt acks: ${JSON.stringify(duplicates)}`);

  const sample = deliveries.list.find(d => d.attributes.seq === '1');
  return {
    project,
    topic: topic.name,
    subscription: created.name,
    published: count,
    publishedBeforeSubscribing: before,
    distinctIds: new Set(ids).size,
    received: deliveries.distinct,
    deliveries: deliveries.list.length,
    missing: missing.length,
    duplicates,
    contentMismatches,
    badPublishTimes,
    sample: sample && {
      id: sample.id,
      data: sample.data.toString('base64'),
      attributes: sample.attributes,
      publishTime: sample.publishTime.toISOString(),
    },
  };
}

async function nack(run) {
  const count = run.opts.count ?? 3;
  const project = run.opts.project ?? uniqueId('proj');
  const pubsub = run.client(project);
  const [topic] = await pubsub.createTopic(uniqueId('topic'));
  // A long ack deadline: a redelivery within seconds comes from the nack, not from the deadline.
  const [created] = await topic.createSubscription(uniqueId('sub'), {ackDeadlineSeconds: 60});
  const deliveries = new Deliveries();
  run.subscribe(created.name, {}, message => {
    const d = deliveries.add(message);
    // The first delivery of each message is nacked, every later one acked.
    if (deliveries.byId.get(d.id).length === 1) message.nack();
    else message.ack();
  });
  const sent = [];
  for (let i = 0; i < count; i++) sent.push({data: Buffer.from(`nack me once: ${i}`), attributes: {n: String(i)}});
  const ids = await publishAll(topic, sent);
  const twice = () => ids.every(id => (deliveries.byId.get(id) || []).length >= 2);
  await waitUntil(twice, () => `every nacked message to come again (deliveries: ${deliveries.list.length})`, {
    failFast: () => run.streamFailure(),
  });
  await sleep(1500); // the acked second delivery must be the last
  const report = [];
  for (const id of ids) {
    const got = deliveries.byId.get(id);
    const [first, second] = got;
    const redeliveredAfterMs = second.receivedAtMs - first.receivedAtMs;
    run.check(got.length === 2, `${id} was delivered ${got.length} times, expected 2 (nack, then ack)`);
    run.check(second.ackId !== first.ackId, `${id}: the redelivery reuses the ack id of the nacked delivery`);
    run.check(second.data.equals(first.data) && sameAttributes(second.attributes, first.attributes),
      `${id}: the redelivery differs in data or attributes`);
    // "At once": long before the 60 s ack deadline could have brought it back.
    run.check(redeliveredAfterMs < 10000, `${id}: redelivered only after ${redeliveredAfterMs} ms`);
    report.push({id, deliveries: got.length, ackIdChanged: second.ackId !== first.ackId, redeliveredAfterMs,
      data: first.data.toString()});
  }
  run.check(deliveries.distinct === count, `${deliveries.distinct} distinct messages arrived, expected ${count}`);
  return {project, subscription: created.name, messageIds: ids, messages: report};
}

async function flow(run) {
  const count = run.opts.count ?? 60;
  const maxMessages = 10;
  const handlerMs = 150;
  const project = run.opts.project ?? uniqueId('proj');
  const pubsub = run.client(project);
  const [topic] = await pubsub.createTopic(uniqueId('topic'));
  const [created] = await topic.createSubscription(uniqueId('sub'));
  const ids = await publishAll(topic, makeMessages(count, uniqueId('flow')));

  const deliveries = new Deliveries();
  let inHandler = 0;
  let maxInHandler = 0;
  let acked = 0;
  // allowExcessMessages: false is the documented way to make maxMessages a hard limit on what the
  // handler sees; with the default (true) a batch that arrives while the client is full is still
  // handed out whole.
  run.subscribe(created.name, {flowControl: {maxMessages, allowExcessMessages: false}}, message => {
    deliveries.add(message);
    inHandler += 1;
    maxInHandler = Math.max(maxInHandler, inHandler);
    setTimeout(() => {
      inHandler -= 1;
      acked += 1;
      message.ack();
    }, handlerMs);
  });
  await waitUntil(() => deliveries.distinct >= count && inHandler === 0,
    () => `${count} messages handled and acked (got ${deliveries.distinct}, ${inHandler} in the handler)`, {
    failFast: () => run.streamFailure(),
  });
  await sleep(1000);
  const duplicates = deliveries.duplicates();
  const missing = ids.filter(id => !deliveries.byId.has(id));
  run.check(maxInHandler <= maxMessages, `${maxInHandler} messages were in the handler at once (limit ${maxMessages})`);
  run.check(missing.length === 0, `${missing.length} messages never arrived`);
  run.check(acked === deliveries.list.length, `acked ${acked} of ${deliveries.list.length} deliveries`);
  run.check(Object.keys(duplicates).length === 0, `duplicates: ${JSON.stringify(duplicates)}`);
  return {
    project,
    subscription: created.name,
    published: count,
    maxMessages,
    handlerMs,
    maxInHandler,
    received: deliveries.distinct,
    deliveries: deliveries.list.length,
    acked,
    missing: missing.length,
    duplicates,
  };
}

async function errors(run) {
  const project = run.opts.project ?? uniqueId('proj');
  const pubsub = run.client(project);
  const [topic] = await pubsub.createTopic(uniqueId('topic'));

  // [what, expected gRPC code, call]
  const cases = [
    ['createExistingTopic', 6, () => pubsub.createTopic(topic.name)], // ALREADY_EXISTS
    ['publishToMissingTopic', 5, () => // NOT_FOUND
      pubsub.topic(uniqueId('missing')).publishMessage({data: Buffer.from('to nowhere')})],
    ['subscriptionWithAckDeadline5', 3, () => // INVALID_ARGUMENT: Google documents 10..600 s
      topic.createSubscription(uniqueId('sub'), {ackDeadlineSeconds: 5})],
    ['subscriptionWithAckDeadline601', 3, () => topic.createSubscription(uniqueId('sub'), {ackDeadlineSeconds: 601})],
    ['subscriptionOnMissingTopic', 5, () => pubsub.topic(uniqueId('missing')).createSubscription(uniqueId('sub'))],
    ['getMissingSubscription', 5, () => pubsub.subscription(uniqueId('missing')).getMetadata()],
  ];
  // Google's emulator accepts (and keeps) ack deadlines below 10 s.
  const emulatorQuirks = {subscriptionWithAckDeadline5: 'accepts ackDeadlineSeconds 5 (Google documents 10..600)'};

  const results = {};
  const expected = {};
  const quirks = [];
  for (const [what, code, call] of cases) {
    const got = await codeOf(call);
    results[what] = got;
    expected[what] = code;
    if (got.code !== code && run.opts.target === 'emulator' && emulatorQuirks[what] && got.code === null) {
      quirks.push(emulatorQuirks[what]);
      continue;
    }
    run.check(got.code === code, `${what}: expected code ${code}, got ${JSON.stringify(got)}`);
    run.check(got.code === null || Boolean(got.message), `${what}: the error has no message`);
  }
  return {project, results, expected, quirks};
}

async function iot(run) {
  const name = run.opts.subscription;
  const count = run.opts.count;
  if (!name || !Number.isInteger(count) || count < 1) {
    throw new Error('iot needs --subscription projects/P/subscriptions/S and --count N');
  }
  const match = /^projects\/([^/]+)\/subscriptions\/[^/]+$/.exec(name);
  if (!match) throw new Error(`not a subscription name: ${name}`);
  const project = match[1];
  const pubsub = run.client(project);
  const deliveries = new Deliveries();
  run.subscribe(name, {}, message => {
    deliveries.add(message);
    message.ack();
  });
  log(`listening on ${name} for ${count} messages`);
  await waitUntil(() => deliveries.distinct >= count, () => `${count} device messages (got ${deliveries.distinct})`, {
    failFast: () => run.streamFailure(),
  });
  await sleep(1000); // anything beyond `count` (or a second copy) would show here
  const duplicates = deliveries.duplicates();
  run.check(deliveries.distinct === count, `received ${deliveries.distinct} distinct messages, expected ${count}`);
  run.check(Object.keys(duplicates).length === 0, `duplicates: ${JSON.stringify(duplicates)}`);
  const firsts = [...deliveries.byId.values()].map(ds => ds[0]);
  return {
    project,
    subscription: name,
    received: deliveries.distinct,
    deliveries: deliveries.list.length,
    duplicates,
    messages: firsts.map(d => ({
      id: d.id,
      data: d.data.toString('base64'),
      attributes: d.attributes,
      publishTime: d.publishTime.toISOString(),
    })),
  };
}

const SCENARIOS = {roundtrip, nack, flow, errors, iot};

// --- main ---------------------------------------------------------------------------------------

async function main() {
  const started = Date.now();
  let opts;
  const result = {scenario: process.argv[2] ?? null, ok: false, failures: [], clientVersion: CLIENT_VERSION};
  let run = null;
  try {
    opts = parseArgs(process.argv.slice(2));
    const scenario = SCENARIOS[opts.scenario];
    if (!scenario) {
      throw new Error(`unknown scenario ${opts.scenario}; one of ${Object.keys(SCENARIOS).join(', ')}`);
    }
    // Never talk to Google by accident: this program is only for emulator-style endpoints.
    if (!process.env.PUBSUB_EMULATOR_HOST) throw new Error('PUBSUB_EMULATOR_HOST is not set');
    result.endpoint = process.env.PUBSUB_EMULATOR_HOST;
    runDeadline = started + opts.timeout * 1000;
    run = new Run(opts);
    Object.assign(result, await scenario(run));
  } catch (err) {
    const timedOut = err instanceof TimeoutError;
    const code = err.code !== undefined ? ` (code ${err.code})` : '';
    result.failures.push(`${timedOut ? 'timeout' : 'error'}: ${err.message ?? err}${code}`);
    if (!timedOut && err.stack) log(err.stack);
  }
  if (run) {
    result.failures.push(...run.failures);
    result.streamErrors = run.streamErrors;
    result.debug = run.debugMessages.slice(0, 20);
    // What the client sent while the scenario ran, before closing cancels the streams.
    result.wire = wireReport();
    const closeProblems = await run.close();
    result.failures.push(...closeProblems);
    result.streamErrors.forEach(e => result.failures.push(`subscription error: ${JSON.stringify(e)}`));
  }
  result.ok = result.failures.length === 0;
  result.elapsedMs = Date.now() - started;
  const line = JSON.stringify(result) + '\n';
  process.stdout.write(line, () => process.exit(result.ok ? 0 : 1));
}

// A last guard: whatever hangs (a close that never ends, a stuck write), the process goes.
const guardSeconds = (parseFloat(process.argv[process.argv.indexOf('--timeout') + 1]) || 60) + 30;
const guard = setTimeout(() => {
  const failure = {scenario: process.argv[2] ?? null, ok: false, failures: ['hard timeout: the run did not end']};
  process.stdout.write(JSON.stringify(failure) + '\n', () => process.exit(2));
}, guardSeconds * 1000);
guard.unref();

main();
