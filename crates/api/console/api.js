// The console's only way to the server: the same REST API the CLI and Google's clients use, with
// the signed-in token on every call. The token lives in sessionStorage (gone when the tab
// closes); the project and location are remembered in localStorage for the next sign-in.

const TOKEN = 'ferrocore.token';
const PLACE = 'ferrocore.place';

export const session = {
  get token() { return sessionStorage.getItem(TOKEN); },
  get place() {
    try { return JSON.parse(localStorage.getItem(PLACE)) || {}; } catch { return {}; }
  },
  signIn(token, project, location) {
    sessionStorage.setItem(TOKEN, token);
    localStorage.setItem(PLACE, JSON.stringify({ project, location }));
  },
  signOut() { sessionStorage.removeItem(TOKEN); },
  get parent() {
    const { project, location } = this.place;
    return `projects/${project}/locations/${location}`;
  },
};

/** An error the API answered, in Google's shape. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status; // 'NOT_FOUND', 'PERMISSION_DENIED', ...
    this.code = code; // the HTTP status
  }
}

function headers(extra) {
  const h = { Authorization: `Bearer ${session.token}`, ...extra };
  return h;
}

/** Calls `method path` (path after `/v1/`, query included) and returns the parsed answer. */
export async function call(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(`/v1/${path}`, init);
  } catch {
    throw new ApiError('UNAVAILABLE', 0, 'The server cannot be reached.');
  }
  const text = await resp.text();
  let json = {};
  try { json = text ? JSON.parse(text) : {}; } catch { /* not JSON: reported below */ }
  if (!resp.ok) {
    const e = json.error || {};
    throw new ApiError(e.status || 'UNKNOWN', resp.status, e.message || `The server answered ${resp.status}.`);
  }
  return json;
}

/** Percent-encodes each segment of a resource name. */
export function q(params) {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) v.forEach((x) => s.append(k, x));
    else if (v !== undefined && v !== null && v !== '') s.append(k, v);
  }
  const text = s.toString();
  return text ? `?${text}` : '';
}

/** The subset of `permissions` the caller holds on `resource` (a project id or registry name). */
export async function held(resource, permissions) {
  const path = resource.includes('/') ? `${resource}:testIamPermissions` : `projects/${resource}:testIamPermissions`;
  try {
    const r = await call('POST', path, { permissions });
    return new Set(r.permissions || []);
  } catch (e) {
    // A refused token must reach the router (back to sign-in); anything else means "none held".
    if (e.code === 401) throw e;
    return new Set();
  }
}

/**
 * Follows a topic's server-sent events (`topics/T/stream`) with fetch, which can send the token
 * (EventSource cannot). Calls `onMessage(record)` per record; reconnects from the next offset
 * after a dropped stream. Returns a function that stops it.
 */
export function follow(topic, { deviceId, from = 'latest', onMessage, onState }) {
  const abort = new AbortController();
  let next = null;
  (async () => {
    while (!abort.signal.aborted) {
      const params = next === null ? { from, deviceId } : { offset: next, deviceId };
      try {
        const resp = await fetch(`/v1/${topic}/stream${q(params)}`, { headers: headers(), signal: abort.signal });
        if (!resp.ok) {
          const e = (await resp.json().catch(() => ({}))).error || {};
          onState?.('error', e.message || `The server answered ${resp.status}.`);
          if (resp.status < 500) return;
        } else {
          onState?.('open');
          const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value;
            let end;
            while ((end = buffer.indexOf('\n\n')) >= 0) {
              const event = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              const data = event.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
              if (!data) continue;
              const record = JSON.parse(data);
              next = BigInt(record.offset) + 1n;
              onMessage(record);
            }
          }
        }
      } catch (e) {
        if (abort.signal.aborted) return;
        onState?.('error', 'The stream was interrupted; reconnecting.');
      }
      await new Promise((r) => setTimeout(r, 2000));
    }
  })();
  return () => abort.abort();
}

// Payloads travel as base64 in the API.

export function fromBase64(b64) {
  const bin = atob(b64 || '');
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

export function toBase64(bytes) {
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

export function textToBase64(text) {
  return toBase64(new TextEncoder().encode(text));
}

/** The payload as text when it is printable UTF-8, else null. */
export function asText(bytes) {
  try {
    const s = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    // eslint-disable-next-line no-control-regex
    return /[\u0000-\u0008\u000e-\u001f\u007f]/.test(s) ? null : s;
  } catch {
    return null;
  }
}

export function asHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
}
