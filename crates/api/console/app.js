// The console's pages and its router (`#/path` in the address, so the browser's back button and
// bookmarks work and the server serves a single page). Each page reads what it shows through the
// REST API when it opens; actions the token may not take are disabled and say why.

import { ApiError, call, follow, held, q, session, textToBase64 } from './api.js';
import { action, badge, clearNotice, facts, field, h, notify, payload, submit, table, when } from './views.js';

const PROJECT_PERMISSIONS = ['cloudiot.registries.list', 'cloudiot.registries.create'];
const REGISTRY_PERMISSIONS = [
  'cloudiot.registries.get', 'cloudiot.registries.update', 'cloudiot.registries.delete',
  'cloudiot.devices.list', 'cloudiot.devices.get', 'cloudiot.devices.create', 'cloudiot.devices.update',
  'cloudiot.devices.delete', 'cloudiot.devices.updateConfig', 'cloudiot.devices.sendCommand',
  'cloudiot.devices.bindGateway', 'cloudiot.devices.unbindGateway',
];
const PAGE_SIZE = 50;
const LIVE_KEPT = 200;

// What the open page started that must stop when it is left (live streams, timers).
let cleanups = [];
function onLeave(f) { cleanups.push(f); }

const enc = encodeURIComponent;
const registryPath = (r) => `${session.parent}/registries/${r}`;
const devicePath = (r, d) => `${registryPath(r)}/devices/${d}`;

// ---------------------------------------------------------------------------------------------
// Sign-in

function signInPage() {
  const place = session.place;
  const token = h('input', { type: 'password', name: 'token', required: true, autocomplete: 'off' });
  const project = h('input', { type: 'text', name: 'project', required: true, value: place.project || '' });
  const loc = h('input', { type: 'text', name: 'location', required: true, value: place.location || 'us-central1' });
  const form = h('form', { class: 'stack', 'aria-labelledby': 'signin-title' },
    field('Token', token, 'The admin token, or an API token from `ferrocore tokens create`.'),
    field('Project', project),
    field('Location', loc),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Sign in')));
  submit(form, async (data) => {
    const t = data.get('token').trim();
    const p = data.get('project').trim();
    const l = data.get('location').trim();
    session.signIn(t, p, l);
    try {
      // Any answer but 401 proves the token: a scoped one may still be refused the list.
      await call('GET', `projects/${enc(p)}/locations/${enc(l)}/registries${q({ pageSize: 1 })}`);
    } catch (e) {
      if (e.code === 401 || e.code === 0) {
        session.signOut();
        throw e;
      }
    }
    clearNotice();
    location.hash = '#/';
    route();
  });
  return [h('h1', { id: 'signin-title' }, 'Sign in to Ferrocore'), form];
}

// ---------------------------------------------------------------------------------------------
// Overview

async function overviewPage() {
  const out = [h('h1', {}, 'Overview')];
  let status;
  try {
    status = await call('GET', 'status');
  } catch (e) {
    if (e.code !== 403) throw e;
    out.push(h('p', { class: 'denied' }, 'The server overview needs the admin token. ', h('a', { href: '#/registries' }, 'Registries'), ' are available to this token.'));
    return out;
  }
  const rate = h('span', { class: 'value', id: 'rate' }, '…');
  const connected = h('span', { class: 'value', id: 'connected' }, status.connectedDevices);
  const conns = h('span', { class: 'value' }, `${status.mqttConnections.mqtts} TLS · ${status.mqttConnections.mqtt} plain`);
  out.push(h('div', { class: 'cards' },
    h('div', { class: 'card' }, h('span', {}, 'Devices connected'), connected),
    h('div', { class: 'card' }, h('span', {}, 'Telemetry messages per second'), rate),
    h('div', { class: 'card' }, h('span', {}, 'MQTT connections'), conns),
    h('div', { class: 'card' }, h('span', {}, 'Server version'), h('span', { class: 'value' }, status.version))));
  // Rates come from two readings of the counters.
  let last = { at: performance.now(), n: BigInt(status.messages.telemetryReceived) };
  const timer = setInterval(async () => {
    try {
      const s = await call('GET', 'status');
      const now = { at: performance.now(), n: BigInt(s.messages.telemetryReceived) };
      const perSecond = Number(now.n - last.n) / ((now.at - last.at) / 1000);
      rate.textContent = perSecond.toFixed(perSecond < 10 ? 1 : 0);
      connected.textContent = s.connectedDevices;
      last = now;
    } catch { /* the next tick tries again */ }
  }, 3000);
  onLeave(() => clearInterval(timer));
  const sinks = await call('GET', 'sinks').catch(() => ({ sinks: [] }));
  out.push(h('h2', {}, 'Sinks'));
  out.push(table('External sinks', [
    ['Name', (s) => s.name],
    ['Topics', (s) => s.topics],
    ['URL', (s) => s.url],
    ['State', (s) => badge(s.state, s.state === 'ok' ? 'ok' : 'bad')],
    ['Lag (messages)', (s) => s.lagMessages],
    ['Lag (seconds)', (s) => s.lagSeconds],
    ['Last error', (s) => s.lastError || '—'],
  ], sinks.sinks || [], 'none configured (see `ferrocore serve --sink`).'));
  // A server that runs alone answers FAILED_PRECONDITION: no section then.
  const cluster = await call('GET', 'cluster').catch(() => null);
  if (cluster) {
    out.push(h('h2', {}, 'Cluster nodes'));
    out.push(table('Nodes this server hears from, itself included', [
      ['Node', (n) => n.nodeId],
      ['Devices connected', (n) => n.connections],
      ['Last heartbeat', (n) => when(n.lastHeartbeatTime)],
      ['HTTP', (n) => n.httpAddress],
      ['MQTT', (n) => n.mqttAddress],
    ], cluster.nodes || []));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Registries

function enabled(state) { return state !== 'MQTT_DISABLED' && state !== 'HTTP_DISABLED'; }

function registryForm(reg, submitLabel) {
  const events = reg?.eventNotificationConfigs || [];
  const defaultTopic = events.find((c) => !c.subfolderMatches)?.pubsubTopicName || '';
  const extra = events.filter((c) => c.subfolderMatches).map((c) => `${c.subfolderMatches} ${c.pubsubTopicName}`).join('\n');
  const id = h('input', { type: 'text', name: 'id', required: true, value: reg?.id || '', readonly: !!reg, pattern: '[a-zA-Z][a-zA-Z0-9._%+~-]{2,63}' });
  const level = h('select', { name: 'logLevel' }, ['NONE', 'ERROR', 'INFO', 'DEBUG'].map((l) =>
    h('option', { value: l, selected: (reg?.logLevel || 'NONE') === l || (l === 'NONE' && reg?.logLevel === 'LOG_LEVEL_UNSPECIFIED') }, l)));
  return h('form', { class: 'stack' },
    reg ? null : field('Registry id', id, '3 to 64 characters; starts with a letter.'),
    field('Telemetry topic', h('input', { type: 'text', name: 'eventTopic', value: defaultTopic, placeholder: 'projects/PROJECT/topics/TOPIC' }),
      'Where device events go, unless a subfolder below matches.'),
    field('Topics by subfolder', h('textarea', { name: 'subfolderTopics', rows: 3 }, extra),
      'One per line: SUBFOLDER projects/PROJECT/topics/TOPIC'),
    field('State topic', h('input', { type: 'text', name: 'stateTopic', value: reg?.stateNotificationConfig?.pubsubTopicName || '', placeholder: 'projects/PROJECT/topics/TOPIC' })),
    field('MQTT bridge enabled', h('input', { type: 'checkbox', name: 'mqtt', checked: !reg || enabled(reg.mqttConfig?.mqttEnabledState) })),
    field('HTTP bridge enabled', h('input', { type: 'checkbox', name: 'http', checked: !reg || enabled(reg.httpConfig?.httpEnabledState) })),
    field('Activity log level', level),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, submitLabel)));
}

function registryBody(data) {
  const events = [];
  for (const line of (data.get('subfolderTopics') || '').split('\n')) {
    const [sub, topic] = line.trim().split(/\s+/);
    if (sub && topic) events.push({ subfolderMatches: sub, pubsubTopicName: topic });
    else if (sub) throw new ApiError('INVALID_ARGUMENT', 400, `The line '${line.trim()}' needs a subfolder and a topic.`);
  }
  const eventTopic = data.get('eventTopic').trim();
  if (eventTopic) events.push({ pubsubTopicName: eventTopic });
  const stateTopic = data.get('stateTopic').trim();
  return {
    eventNotificationConfigs: events,
    stateNotificationConfig: stateTopic ? { pubsubTopicName: stateTopic } : {},
    mqttConfig: { mqttEnabledState: data.get('mqtt') ? 'MQTT_ENABLED' : 'MQTT_DISABLED' },
    httpConfig: { httpEnabledState: data.get('http') ? 'HTTP_ENABLED' : 'HTTP_DISABLED' },
    logLevel: data.get('logLevel'),
  };
}

async function registriesPage() {
  const perms = await held(session.place.project, PROJECT_PERMISSIONS);
  const out = [h('h1', {}, 'Registries')];
  if (perms.has('cloudiot.registries.list')) {
    const list = await call('GET', `${session.parent}/registries${q({ pageSize: 1000 })}`);
    out.push(table('Registries in ' + session.parent, [
      ['Id', (r) => h('a', { href: `#/registries/${enc(r.id)}` }, r.id)],
      ['Telemetry topics', (r) => (r.eventNotificationConfigs || []).map((c) => c.pubsubTopicName).join(', ') || '—'],
      ['State topic', (r) => r.stateNotificationConfig?.pubsubTopicName || '—'],
      ['MQTT', (r) => (enabled(r.mqttConfig?.mqttEnabledState) ? 'on' : 'off')],
      ['HTTP', (r) => (enabled(r.httpConfig?.httpEnabledState) ? 'on' : 'off')],
    ], list.deviceRegistries || [], 'none yet.'));
  } else {
    out.push(h('p', { class: 'denied' }, 'Your token may not list the registries of this project (cloudiot.registries.list).'));
  }
  out.push(h('h2', {}, 'Create a registry'));
  if (perms.has('cloudiot.registries.create')) {
    const form = registryForm(null, 'Create registry');
    submit(form, async (data) => {
      const body = { id: data.get('id').trim(), ...registryBody(data) };
      await call('POST', `${session.parent}/registries`, body);
      notify(`Registry ${body.id} created.`);
      location.hash = `#/registries/${enc(body.id)}`;
    });
    out.push(form);
  } else {
    out.push(h('p', { class: 'denied' }, 'Your token may not create registries (cloudiot.registries.create).'));
  }
  return out;
}

async function registryPage(regId) {
  const name = registryPath(regId);
  const [reg, perms] = await Promise.all([call('GET', name), held(name, REGISTRY_PERMISSIONS)]);
  const out = [h('h1', {}, `Registry ${reg.id}`)];

  out.push(h('h2', {}, 'Devices'));
  if (perms.has('cloudiot.devices.list')) out.push(await deviceList(regId));
  else out.push(h('p', { class: 'denied' }, 'Your token may not list devices (cloudiot.devices.list).'));

  out.push(h('h2', {}, 'Create a device'));
  if (perms.has('cloudiot.devices.create')) out.push(createDeviceForm(regId));
  else out.push(h('p', { class: 'denied' }, 'Your token may not create devices (cloudiot.devices.create).'));

  out.push(h('h2', {}, 'Settings'));
  const form = registryForm(reg, 'Save settings');
  if (perms.has('cloudiot.registries.update')) {
    submit(form, async (data) => {
      const mask = 'eventNotificationConfigs,stateNotificationConfig,mqttConfig,httpConfig,logLevel';
      await call('PATCH', `${name}${q({ updateMask: mask })}`, registryBody(data));
      notify('Registry settings saved.');
    });
  } else {
    form.querySelectorAll('input, select, textarea, button').forEach((el) => { el.disabled = true; });
    form.prepend(h('p', { class: 'denied' }, 'Read only: your token lacks cloudiot.registries.update.'));
  }
  out.push(form);
  out.push(h('div', { class: 'actions' }, action('Delete registry', perms.has('cloudiot.registries.delete'), 'cloudiot.registries.delete', async () => {
    if (!confirm(`Delete registry ${reg.id}? It must have no devices.`)) return;
    try {
      await call('DELETE', name);
      notify(`Registry ${reg.id} deleted.`);
      location.hash = '#/registries';
    } catch (e) { notify(e.message, 'error'); }
  }, 'danger')));
  return out;
}

/** The device list: search by id prefix, paged forward and back with the API's page tokens. */
async function deviceList(regId) {
  const holder = h('div', {});
  const search = h('input', { type: 'search', name: 'prefix', placeholder: 'id prefix' });
  const tokens = ['']; // tokens[i] opens page i
  let page = 0;
  const load = async () => {
    const r = await call('GET', `${registryPath(regId)}/devices${q({
      pageSize: PAGE_SIZE, pageToken: tokens[page], deviceIdPrefix: search.value.trim(),
      fieldMask: 'blocked,lastHeartbeatTime,lastEventTime,gatewayConfig',
    })}`);
    tokens[page + 1] = r.nextPageToken || null;
    const prev = h('button', { type: 'button', class: 'secondary', disabled: page === 0, onclick: () => { page--; load(); } }, 'Previous page');
    const next = h('button', { type: 'button', class: 'secondary', disabled: !r.nextPageToken, onclick: () => { page++; load(); } }, 'Next page');
    holder.replaceChildren(
      table(`Devices, page ${page + 1}`, [
        ['Id', (d) => h('a', { href: `#/registries/${enc(regId)}/devices/${enc(d.id)}` }, d.id)],
        ['Numeric id', (d) => d.numId],
        ['Kind', (d) => (d.gatewayConfig?.gatewayType === 'GATEWAY' ? 'gateway' : 'device')],
        ['Blocked', (d) => (d.blocked ? badge('blocked', 'bad') : 'no')],
        ['Last heartbeat', (d) => when(d.lastHeartbeatTime)],
        ['Last event', (d) => when(d.lastEventTime)],
      ], r.devices || [], search.value ? 'no device id starts with that.' : 'none yet.'),
      h('div', { class: 'actions' }, prev, next));
  };
  const form = h('form', { class: 'inline', role: 'search' }, field('Find devices by id prefix', search), h('button', { type: 'submit' }, 'Search'));
  submit(form, async () => { tokens.length = 1; page = 0; await load(); });
  await load();
  return h('div', {}, form, holder);
}

function createDeviceForm(regId) {
  const file = h('input', { type: 'file', accept: '.pem,.crt,.pub,text/plain' });
  const key = h('textarea', { name: 'key', rows: 6, placeholder: '-----BEGIN PUBLIC KEY-----' });
  file.addEventListener('change', async () => { if (file.files[0]) key.value = await file.files[0].text(); });
  const format = h('select', { name: 'format' }, ['RSA_PEM', 'RSA_X509_PEM', 'ES256_PEM', 'ES256_X509_PEM'].map((f) => h('option', { value: f }, f)));
  const form = h('form', { class: 'stack' },
    field('Device id', h('input', { type: 'text', name: 'id', required: true, pattern: '[a-zA-Z][a-zA-Z0-9._%+~-]{2,127}' })),
    field('Key format', format),
    field('Public key or certificate', key, 'Paste it, or choose a file below. Leave empty for a device without credentials.'),
    field('Key file', file),
    field('Gateway', h('input', { type: 'checkbox', name: 'gateway' })),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Create device')));
  submit(form, async (data) => {
    const id = data.get('id').trim();
    const body = { id };
    if (data.get('key').trim()) body.credentials = [{ publicKey: { format: data.get('format'), key: data.get('key').trim() } }];
    if (data.get('gateway')) body.gatewayConfig = { gatewayType: 'GATEWAY', gatewayAuthMethod: 'ASSOCIATION_ONLY' };
    await call('POST', `${registryPath(regId)}/devices`, body);
    notify(`Device ${id} created.`);
    location.hash = `#/registries/${enc(regId)}/devices/${enc(id)}`;
  });
  return form;
}

// ---------------------------------------------------------------------------------------------
// A device

async function devicePage(regId, devId) {
  const name = devicePath(regId, devId);
  const [dev, reg, perms] = await Promise.all([call('GET', name), call('GET', registryPath(regId)), held(registryPath(regId), REGISTRY_PERMISSIONS)]);
  const conn = await call('GET', `${name}/connection`).catch(() => null);
  const isGateway = dev.gatewayConfig?.gatewayType === 'GATEWAY';
  const out = [h('h1', {}, `Device ${dev.id}`), h('p', {}, h('a', { href: `#/registries/${enc(regId)}` }, `← Registry ${regId}`))];

  const connection = conn === null ? 'unknown' : conn.connected
    ? badge(conn.gatewayNumId ? `connected through gateway ${conn.gatewayNumId}` : 'connected', 'ok')
    : badge('not connected', 'muted');
  out.push(h('section', { class: 'panel', 'aria-labelledby': 'identity' }, h('h2', { id: 'identity' }, 'Identity and status'), facts([
    ['Name', dev.name],
    ['Numeric id', dev.numId],
    ['Kind', isGateway ? `gateway (${dev.gatewayConfig.gatewayAuthMethod})` : 'device'],
    ['Blocked', dev.blocked ? badge('blocked', 'bad') : 'no'],
    ['Connection', h('span', { id: 'connection' }, connection)],
    ['Last heartbeat', when(dev.lastHeartbeatTime)],
    ['Last event', when(dev.lastEventTime)],
    ['Last state', when(dev.lastStateTime)],
    ['Last config sent', when(dev.lastConfigSendTime)],
    ['Last config ack', when(dev.lastConfigAckTime)],
    ['Last error', dev.lastErrorStatus?.message ? `${when(dev.lastErrorTime)}: ${dev.lastErrorStatus.message}` : '—'],
    ['Activity log level', dev.logLevel || 'as the registry'],
  ])));

  const mayUpdate = perms.has('cloudiot.devices.update');
  out.push(h('div', { class: 'actions' },
    action(dev.blocked ? 'Unblock' : 'Block', mayUpdate, 'cloudiot.devices.update', async () => {
      try {
        await call('PATCH', `${name}${q({ updateMask: 'blocked' })}`, { blocked: !dev.blocked });
        notify(dev.blocked ? 'Device unblocked.' : 'Device blocked; its connection was closed.');
        route();
      } catch (e) { notify(e.message, 'error'); }
    }, 'secondary'),
    action('Delete device', perms.has('cloudiot.devices.delete'), 'cloudiot.devices.delete', async () => {
      if (!confirm(`Delete device ${dev.id}?`)) return;
      try {
        await call('DELETE', name);
        notify(`Device ${dev.id} deleted.`);
        location.hash = `#/registries/${enc(regId)}`;
      } catch (e) { notify(e.message, 'error'); }
    }, 'danger')));

  out.push(h('h2', {}, 'Credentials'));
  out.push(table('Credentials', [
    ['Format', (c) => c.publicKey?.format],
    ['Expires', (c) => (c.expirationTime && !c.expirationTime.startsWith('1970-01-01') ? when(c.expirationTime) : 'never')],
    ['Key', (c) => h('pre', {}, (c.publicKey?.key || '').trim().split('\n').slice(0, 2).join('\n') + '\n…')],
  ], dev.credentials || [], 'none (a gateway may still act for it).'));

  out.push(h('h2', {}, 'Metadata'));
  const meta = h('textarea', { name: 'metadata', rows: 4 }, Object.entries(dev.metadata || {}).map(([k, v]) => `${k}=${v}`).join('\n'));
  const metaForm = h('form', { class: 'stack' }, field('Metadata', meta, 'One KEY=VALUE per line.'),
    h('div', { class: 'actions' }, h('button', { type: 'submit', disabled: !mayUpdate, title: mayUpdate ? null : 'Your token lacks cloudiot.devices.update.' }, 'Save metadata')));
  submit(metaForm, async (data) => {
    const metadata = {};
    for (const line of data.get('metadata').split('\n')) {
      if (!line.trim()) continue;
      const i = line.indexOf('=');
      if (i < 1) throw new ApiError('INVALID_ARGUMENT', 400, `The line '${line}' is not KEY=VALUE.`);
      metadata[line.slice(0, i).trim()] = line.slice(i + 1);
    }
    await call('PATCH', `${name}${q({ updateMask: 'metadata' })}`, { metadata });
    notify('Metadata saved.');
  });
  out.push(metaForm);

  out.push(...await configSection(name, dev, perms));
  out.push(...await stateSection(name));
  out.push(...commandSection(name, perms));
  out.push(...await gatewaySection(regId, dev, isGateway, perms));
  out.push(...liveSection(reg, dev));
  return out;
}

async function configSection(name, dev, perms) {
  const out = [h('h2', {}, 'Configuration')];
  const versions = await call('GET', `${name}/configVersions`).catch(() => ({ deviceConfigs: [] }));
  out.push(table('Config versions, newest first', [
    ['Version', (c) => c.version],
    ['Sent by the cloud', (c) => when(c.cloudUpdateTime)],
    ['Acknowledged by the device', (c) => (c.deviceAckTime ? badge(`acknowledged ${when(c.deviceAckTime)}`, 'ok') : badge('not acknowledged', 'muted'))],
    ['Data', (c) => payload(c.binaryData)],
  ], versions.deviceConfigs || []));
  const allowed = perms.has('cloudiot.devices.updateConfig');
  const form = h('form', { class: 'stack' },
    field('New config', h('textarea', { name: 'config', rows: 4 })),
    field('The text above is base64', h('input', { type: 'checkbox', name: 'base64' })),
    h('div', { class: 'actions' }, h('button', { type: 'submit', disabled: !allowed, title: allowed ? null : 'Your token lacks cloudiot.devices.updateConfig.' }, 'Send config')));
  submit(form, async (data) => {
    const text = data.get('config');
    const binaryData = data.get('base64') ? text.trim() : textToBase64(text);
    const r = await call('POST', `${name}:modifyCloudToDeviceConfig`, { versionToUpdate: dev.config?.version || '0', binaryData });
    notify(`Config version ${r.version} sent.`);
    route();
  });
  out.push(form);
  return out;
}

async function stateSection(name) {
  const states = await call('GET', `${name}/states`).catch(() => ({ deviceStates: [] }));
  return [h('h2', {}, 'State history'), table('Reported states, newest first', [
    ['Reported', (s) => when(s.updateTime)],
    ['Data', (s) => payload(s.binaryData)],
  ], states.deviceStates || [], 'the device has not reported any.')];
}

function commandSection(name, perms) {
  const allowed = perms.has('cloudiot.devices.sendCommand');
  const form = h('form', { class: 'stack' },
    field('Command', h('textarea', { name: 'command', rows: 3 })),
    field('Subfolder', h('input', { type: 'text', name: 'subfolder' }), 'Optional: the command goes to /devices/ID/commands/SUBFOLDER.'),
    field('The text above is base64', h('input', { type: 'checkbox', name: 'base64' })),
    h('div', { class: 'actions' }, h('button', { type: 'submit', disabled: !allowed, title: allowed ? null : 'Your token lacks cloudiot.devices.sendCommand.' }, 'Send command')));
  submit(form, async (data) => {
    const text = data.get('command');
    const body = { binaryData: data.get('base64') ? text.trim() : textToBase64(text) };
    if (data.get('subfolder').trim()) body.subfolder = data.get('subfolder').trim();
    await call('POST', `${name}:sendCommandToDevice`, body);
    notify('Command delivered to the device.');
  });
  return [h('h2', {}, 'Send a command'), form];
}

async function gatewaySection(regId, dev, isGateway, perms) {
  const out = [h('h2', {}, isGateway ? 'Devices bound to this gateway' : 'Gateways this device is bound to')];
  const filter = isGateway ? { 'gatewayListOptions.associationsGatewayId': dev.id } : { 'gatewayListOptions.associationsDeviceId': dev.id };
  const bound = await call('GET', `${registryPath(regId)}/devices${q({ ...filter, pageSize: 1000 })}`).catch(() => ({ devices: [] }));
  const mayUnbind = perms.has('cloudiot.devices.unbindGateway');
  const unbind = (other) => action('Unbind', mayUnbind, 'cloudiot.devices.unbindGateway', async () => {
    const body = isGateway ? { gatewayId: dev.id, deviceId: other.id } : { gatewayId: other.id, deviceId: dev.id };
    try {
      await call('POST', `${registryPath(regId)}:unbindDeviceFromGateway`, body);
      notify(`Unbound ${body.deviceId} from ${body.gatewayId}.`);
      route();
    } catch (e) { notify(e.message, 'error'); }
  }, 'secondary');
  out.push(table(isGateway ? 'Bound devices' : 'Gateways', [
    ['Id', (d) => h('a', { href: `#/registries/${enc(regId)}/devices/${enc(d.id)}` }, d.id)],
    ['Numeric id', (d) => d.numId],
    ['', unbind],
  ], bound.devices || []));
  const allowed = perms.has('cloudiot.devices.bindGateway');
  const other = h('input', { type: 'text', name: 'other', required: true });
  const form = h('form', { class: 'inline' }, field(isGateway ? 'Device id to bind' : 'Gateway id to bind to', other),
    h('button', { type: 'submit', disabled: !allowed, title: allowed ? null : 'Your token lacks cloudiot.devices.bindGateway.' }, 'Bind'));
  submit(form, async (data) => {
    const o = data.get('other').trim();
    const body = isGateway ? { gatewayId: dev.id, deviceId: o } : { gatewayId: o, deviceId: dev.id };
    await call('POST', `${registryPath(regId)}:bindDeviceToGateway`, body);
    notify(`Bound ${body.deviceId} to ${body.gatewayId}.`);
    route();
  });
  out.push(form);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Live telemetry

/** A live view of records from `topics` (optionally one device's), newest first. */
function liveView(topics, deviceId) {
  const hex = h('input', { type: 'checkbox' });
  const state = h('p', { class: 'hint', role: 'status' }, 'Connecting…');
  const body = h('tbody', {});
  const view = h('div', { class: 'live' },
    h('div', { class: 'actions' }, field('Show payloads as hex', hex), state),
    h('div', { class: 'table-wrap' }, h('table', { 'aria-live': 'off' },
      h('caption', {}, `Messages as they arrive${deviceId ? ` from ${deviceId}` : ''}, newest first`),
      h('thead', {}, h('tr', {}, ['Offset', 'Received', 'Device', 'Subfolder', 'Payload'].map((c) => h('th', { scope: 'col' }, c)))),
      body)));
  const rows = [];
  const render = () => body.replaceChildren(...rows.map((m) => h('tr', { class: 'message' },
    h('td', {}, m.offset), h('td', {}, when(m.publishTime)), h('td', {}, m.attributes?.deviceId || '—'),
    h('td', {}, m.attributes?.subFolder || '—'), h('td', { class: 'data' }, payload(m.data, hex.checked)))));
  hex.addEventListener('change', render);
  for (const topic of topics) {
    const stop = follow(topic, {
      deviceId,
      onState: (s, message) => { state.textContent = s === 'open' ? `Following ${topics.join(', ')}.` : message; },
      onMessage: (m) => {
        rows.unshift(m);
        rows.length = Math.min(rows.length, LIVE_KEPT);
        render();
      },
    });
    onLeave(stop);
  }
  return view;
}

function liveSection(reg, dev) {
  const topics = [...new Set((reg.eventNotificationConfigs || []).map((c) => c.pubsubTopicName).filter(Boolean))];
  const out = [h('h2', {}, 'Live telemetry')];
  if (!topics.length) {
    out.push(h('p', { class: 'hint' }, 'The registry sends telemetry to no topic.'));
    return out;
  }
  const holder = h('div', {});
  const start = h('button', { type: 'button', onclick: () => { start.remove(); holder.replaceChildren(liveView(topics, dev.id)); } }, 'Watch telemetry');
  out.push(h('p', { class: 'hint' }, 'Reading the topic log needs the admin token.'), start, holder);
  return out;
}

async function livePage(params) {
  const out = [h('h1', {}, 'Live telemetry')];
  const topic = h('input', { type: 'text', name: 'topic', required: true, size: 48, value: params.get('topic') || '', placeholder: 'projects/PROJECT/topics/TOPIC' });
  const device = h('input', { type: 'text', name: 'device', value: params.get('device') || '' });
  const form = h('form', { class: 'inline' }, field('Topic', topic), field('Device id (optional)', device), h('button', { type: 'submit' }, 'Watch'));
  submit(form, async (data) => {
    location.hash = `#/live?${new URLSearchParams({ topic: data.get('topic').trim(), device: data.get('device').trim() })}`;
  });
  out.push(form);
  if (params.get('topic')) out.push(liveView([params.get('topic')], params.get('device') || undefined));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Router

const ROUTES = [
  [/^\/$/, () => overviewPage(), 'Overview'],
  [/^\/registries$/, () => registriesPage(), 'Registries'],
  [/^\/registries\/([^/]+)$/, (m) => registryPage(decodeURIComponent(m[1])), 'Registry'],
  [/^\/registries\/([^/]+)\/devices\/([^/]+)$/, (m) => devicePage(decodeURIComponent(m[1]), decodeURIComponent(m[2])), 'Device'],
  [/^\/live$/, (m, params) => livePage(params), 'Live telemetry'],
];

async function route() {
  cleanups.forEach((f) => f());
  cleanups = [];
  const main = document.getElementById('main');
  const signedIn = !!session.token;
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('signout').hidden = !signedIn;
  document.getElementById('who').textContent = signedIn ? session.parent : '';
  if (!signedIn) {
    document.title = 'Sign in · Ferrocore';
    main.replaceChildren(...signInPage());
    return;
  }
  const [path, query] = (location.hash.slice(1) || '/').split('?');
  const params = new URLSearchParams(query || '');
  for (const a of document.querySelectorAll('#nav a')) {
    const target = a.getAttribute('href').slice(1);
    if (target === path || (target !== '/' && path.startsWith(target))) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const found = ROUTES.map(([re, page, title]) => [re.exec(path), page, title]).find(([m]) => m);
  main.replaceChildren(h('p', { class: 'hint' }, 'Loading…'));
  let nodes;
  let title = 'Not found';
  try {
    if (found) {
      title = found[2];
      nodes = await found[1](found[0], params);
    } else {
      nodes = [h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Back to the overview'))];
    }
  } catch (e) {
    if (e.code === 401) {
      session.signOut();
      notify('The token was refused; sign in again.', 'error');
      route();
      return;
    }
    nodes = [h('h1', {}, title), h('p', { class: 'denied', role: 'alert' }, e.message)];
  }
  document.title = `${title} · Ferrocore`;
  main.replaceChildren(...nodes);
  // Move focus to the new page's heading so keyboard and screen-reader users start there.
  const heading = main.querySelector('h1');
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

window.addEventListener('hashchange', () => { clearNotice(); route(); });
document.getElementById('signout').addEventListener('click', () => {
  session.signOut();
  location.hash = '#/';
  route();
});
route();
