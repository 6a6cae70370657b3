// Building blocks of the pages. Everything is made with DOM calls and textContent, never by
// parsing HTML, so nothing a device or a user typed can become markup.

import { asHex, asText, fromBase64 } from './api.js';

/** `h('button', {type: 'button', onclick: f}, 'Save')`. Attributes starting with `on` are handlers. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

let uid = 0;
/** A labelled control: `field('Registry id', h('input', {...}), 'hint')`. */
export function field(label, control, hint) {
  if (!control.id) control.id = `f${++uid}`;
  const hintEl = hint ? h('span', { class: 'hint', id: `${control.id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute('aria-describedby', hintEl.id);
  const isCheck = control.type === 'checkbox';
  return h('label', { class: isCheck ? 'check' : null, for: control.id }, isCheck ? control : null, label, hintEl,
    isCheck ? null : control);
}

/** A table: `columns` are [header, cell(row)] pairs; cells may return text or nodes. */
export function table(caption, columns, rows, empty = 'None.') {
  if (!rows.length) return h('p', { class: 'hint' }, `${caption}: ${empty}`);
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, columns.map(([head]) => h('th', { scope: 'col' }, head)))),
      h('tbody', {}, rows.map((row) => h('tr', {}, columns.map(([, cell]) => h('td', {}, cell(row))))))));
}

/** Facts as a definition list; entries whose value is empty are left out. */
export function facts(entries) {
  return h('dl', { class: 'facts' },
    entries.filter(([, v]) => v !== undefined && v !== null && v !== '').flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

/** Shows a message in the page's live region (read out by screen readers). */
export function notify(message, kind = 'ok') {
  const el = document.getElementById('notice');
  el.className = kind;
  el.textContent = message;
}

export function clearNotice() {
  notify('', '');
}

/**
 * A button for an action the caller may or may not hold: without the permission it is disabled
 * and says which permission it lacks.
 */
export function action(label, allowed, permission, onclick, cls) {
  const b = h('button', { type: 'button', class: cls, onclick: allowed ? onclick : null, disabled: !allowed }, label);
  if (!allowed) b.title = `Your token lacks ${permission}.`;
  return b;
}

/** Runs `work` for a form submit, reporting failures in the notice and keeping the page. */
export function submit(form, work) {
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const button = form.querySelector('button[type=submit]');
    if (button) button.disabled = true;
    try {
      await work(new FormData(form));
    } catch (e) {
      notify(e.message, 'error');
    } finally {
      if (button) button.disabled = false;
    }
  });
  return form;
}

export function when(ts) {
  if (!ts) return '—';
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? ts : d.toLocaleString();
}

export function badge(text, kind) {
  return h('span', { class: `badge ${kind}` }, text);
}

/**
 * A payload (base64 from the API) shown as text when printable, else as hex; `hex` forces hex.
 */
export function payload(b64, hex = false) {
  const bytes = fromBase64(b64);
  if (!bytes.length) return h('span', { class: 'hint' }, '(empty)');
  const text = hex ? null : asText(bytes);
  if (text !== null) return h('pre', {}, text);
  return h('pre', { 'aria-label': `${bytes.length} bytes in hex` }, asHex(bytes));
}
