// falconeri dashboard: plain JavaScript, no build step, no dependencies.
//
// Every page is drawn from the REST API, called through the dashboard's
// gateway (/ui/api/...), which accepts this browser's session cookie.
// Live updates come from the API's own long-poll (GET .../progress with
// `since`) and server-sent events (GET .../logs?follow=true); nothing
// re-fetches on a timer. Text from the server is only ever set as
// textContent, never parsed as HTML.

'use strict';

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const TERMINAL = new Set(['done', 'error', 'canceled']);
const JOB_STATUSES = ['ready', 'running', 'done', 'error', 'canceled'];
const DATUM_STATUSES = ['ready', 'running', 'publishing', 'done', 'error', 'canceled'];
const OUTCOMES = ['done', 'error', 'timed_out', 'lease_expired', 'interrupted', 'pod_failure',
  'worker_lost', 'canceled', 'publish_failed'];
const LONG_POLL_MS = 25000;
const PAGE_SIZE = 50;

// ---------------------------------------------------------------------------
// Small helpers

/** An element with attributes and children (strings become text). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces `node`'s children, skipping the absent ones (null, undefined, false). */
function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
}

/** Calls the REST API through the gateway; throws an Error with the API's message. */
async function api(path, options = {}) {
  const response = await fetch('/ui/api' + path, {
    method: options.method || 'GET',
    headers: { Accept: 'application/json', 'X-CSRF-Token': CSRF },
    credentials: 'same-origin',
    signal: options.signal,
  });
  if (response.status === 401) {
    window.location.assign('/login');
    throw new Error('signed out');
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return body;
}

function say(text) {
  document.getElementById('status-line').textContent = text;
}

function statusBadge(status) {
  return el('span', { class: `status status-${status}` }, status);
}

function ago(ms) {
  if (ms === null || ms === undefined) return '—';
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function when(ms) {
  if (ms === null || ms === undefined) return '—';
  const date = new Date(ms);
  return el('time', { datetime: date.toISOString(), title: date.toISOString() },
    date.toLocaleString());
}

function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

function finished(counts) {
  return counts.done + counts.error + counts.canceled;
}

function total(counts) {
  return counts.ready + counts.running + counts.publishing + finished(counts);
}

function table(headers, rows, caption) {
  return el('div', { class: 'table-box' },
    el('table', {},
      caption ? el('caption', { class: 'muted' }, caption) : null,
      el('thead', {}, el('tr', {}, headers.map((h) =>
        el('th', { scope: 'col', class: h.num ? 'num' : null }, h.label || h)))),
      el('tbody', {}, rows)));
}

function selectField(id, label, values, current, anyLabel) {
  return el('div', {},
    el('label', { for: id }, label),
    el('select', { id, name: id.replace(/^f-/, '') },
      el('option', { value: '' }, anyLabel),
      values.map((v) => el('option', { value: v, selected: v === current }, v))));
}

function idFromPath() {
  const match = window.location.pathname.match(/\/(\d+)$/);
  return match ? Number(match[1]) : null;
}

/**
 * Follows a job's progress with the API's long-poll until the job ends
 * (or `stopped()` says so), calling `onProgress` with every answer.
 */
async function followProgress(jobId, onProgress, stopped = () => false) {
  let since = null;
  let failures = 0;
  while (!stopped()) {
    const query = since === null ? '' : `?since=${since}&wait_ms=${LONG_POLL_MS}`;
    let progress;
    try {
      progress = await api(`/v1/jobs/${jobId}/progress${query}`);
      failures = 0;
    } catch (err) {
      failures += 1;
      say(`Lost the server (${err.message}); trying again.`);
      if (failures > 5) return;
      // A pause after a failure only, so a server that is down is not hammered.
      await new Promise((resolve) => setTimeout(resolve, 1000 * failures));
      continue;
    }
    say('');
    onProgress(progress);
    if (TERMINAL.has(progress.job.status)) return;
    since = progress.generation;
  }
}

// ---------------------------------------------------------------------------
// Jobs

async function jobsPage(main) {
  const params = new URLSearchParams(window.location.search);
  const status = params.get('status') || '';
  const name = params.get('name') || '';
  document.title = 'Jobs · falconeri';
  const form = el('form', { class: 'filters', method: 'get', action: '/', role: 'search' },
    el('div', {},
      el('label', { for: 'f-name' }, 'Name contains'),
      el('input', { id: 'f-name', name: 'name', value: name, type: 'search' })),
    selectField('f-status', 'Status', JOB_STATUSES, status, 'any'),
    el('div', {}, el('button', { type: 'submit' }, 'Filter')));
  const body = el('tbody', {});
  fill(main, el('h1', {}, 'Jobs'), form,
    el('div', { class: 'table-box' }, el('table', { id: 'jobs' },
      el('thead', {}, el('tr', {},
        el('th', { scope: 'col' }, 'Name'), el('th', { scope: 'col' }, 'Status'),
        el('th', { scope: 'col' }, 'Progress'), el('th', { scope: 'col', class: 'num' }, 'Datums'),
        el('th', { scope: 'col', class: 'hide-narrow' }, 'Created'))),
      body)));
  const query = new URLSearchParams({ limit: '100' });
  if (status) query.set('status', status);
  if (name) query.set('name', name);
  const { jobs } = await api(`/v1/jobs?${query}`);
  if (jobs.length === 0) {
    body.append(el('tr', {}, el('td', { colspan: 5, class: 'muted' }, 'No jobs match.')));
    return;
  }
  const rows = new Map();
  for (const job of jobs) {
    const bar = el('progress', { max: Math.max(job.datum_count, 1), value: 0,
      'aria-label': `progress of ${job.name}` });
    const text = el('span', { class: 'muted' }, '');
    const badge = el('td', {}, statusBadge(job.status));
    const row = el('tr', { 'data-job': job.id },
      el('td', {}, el('a', { href: `/jobs/${job.id}` }, job.name)),
      badge,
      el('td', { class: 'progress-cell' }, bar, ' ', text),
      el('td', { class: 'num' }, job.datum_count),
      el('td', { class: 'hide-narrow', title: new Date(job.created_at).toISOString() },
        ago(job.created_at)));
    rows.set(job.id, { bar, text, badge });
    body.append(row);
  }
  const show = (progress) => {
    const row = rows.get(progress.job.id);
    const all = Math.max(total(progress.counts), 1);
    row.bar.max = all;
    row.bar.value = finished(progress.counts);
    row.text.textContent = `${finished(progress.counts)}/${total(progress.counts)}`;
    fill(row.badge, statusBadge(progress.job.status));
  };
  // Counts once for every job, a few at a time; then the newest unfinished
  // ones (at most four, a browser's connections are few) are followed live.
  const queue = jobs.slice();
  const workers = Array.from({ length: 4 }, async () => {
    while (queue.length) {
      const job = queue.shift();
      try { show(await api(`/v1/jobs/${job.id}/progress`)); } catch (err) { say(err.message); }
    }
  });
  await Promise.all(workers);
  for (const job of jobs.filter((j) => !TERMINAL.has(j.status)).slice(0, 4)) {
    followProgress(job.id, show);
  }
}

// ---------------------------------------------------------------------------
// One job

/** Datums per second over the last minute of progress answers. */
class RateMeter {
  constructor() { this.samples = []; }
  add(done) {
    const now = Date.now();
    this.samples.push({ now, done });
    while (this.samples.length > 2 && now - this.samples[0].now > 60000) this.samples.shift();
  }
  rate() {
    if (this.samples.length < 2) return null;
    const first = this.samples[0];
    const last = this.samples[this.samples.length - 1];
    const seconds = (last.now - first.now) / 1000;
    return seconds >= 1 ? (last.done - first.done) / seconds : null;
  }
}

async function jobPage(main) {
  const id = idFromPath();
  const job = await api(`/v1/jobs/${id}`);
  document.title = `${job.name} · falconeri`;
  const heading = el('h1', {}, job.name, ' ', el('span', { id: 'job-status' }, statusBadge(job.status)));
  const cancel = el('button', { type: 'button', class: 'danger', id: 'cancel-job' }, 'Cancel job');
  const retry = el('button', { type: 'button', id: 'retry-job' }, 'Retry failed datums');
  const bar = el('progress', { id: 'job-progress', class: 'big-progress', max: 1, value: 0,
    'aria-label': 'datums finished' });
  const summary = el('p', { id: 'job-summary', 'aria-live': 'polite' }, '');
  const jobError = el('p', { class: 'error', id: 'job-error' }, job.error_message || '');
  const counts = el('dl', { class: 'counts', id: 'job-counts' });
  const stats = el('section', { id: 'job-stats', 'aria-labelledby': 'stats-h' },
    el('h2', { id: 'stats-h' }, 'Statistics'), el('p', { class: 'muted' }, 'Loading…'));
  const errors = el('section', { id: 'job-errors', 'aria-labelledby': 'errors-h' },
    el('h2', { id: 'errors-h' }, 'Errors'));
  const timeline = el('section', { id: 'job-timeline', 'aria-labelledby': 'timeline-h' },
    el('h2', { id: 'timeline-h' }, 'Attempts by worker'));
  const datums = el('section', { id: 'job-datums', 'aria-labelledby': 'datums-h' },
    el('h2', { id: 'datums-h' }, 'Datums'));
  fill(main,
    el('p', {}, el('a', { href: '/' }, '← Jobs')), heading,
    el('p', { class: 'muted' }, `pipeline ${job.pipeline_name} · egress `, el('code', {}, job.egress_uri)),
    jobError,
    el('div', { class: 'actions' }, cancel, retry),
    bar, summary, counts, errors, stats, timeline, datums);

  cancel.addEventListener('click', async () => {
    if (!window.confirm(`Cancel job ${job.name}? Its running commands are stopped.`)) return;
    cancel.disabled = true;
    try {
      await api(`/v1/jobs/${id}/cancel`, { method: 'POST' });
      say(`Job ${job.name} canceled.`);
    } catch (err) { say(err.message); cancel.disabled = false; }
  });
  retry.addEventListener('click', async () => {
    retry.disabled = true;
    try {
      const retried = await api(`/v1/jobs/${id}/retry`, { method: 'POST' });
      window.location.assign(`/jobs/${retried.id}`);
    } catch (err) { say(err.message); retry.disabled = false; }
  });

  const meter = new RateMeter();
  let lastStatus = job.status;
  let refreshing = false;
  let refreshAgain = false;
  // Statistics, errors and the timeline follow progress too, but at most
  // one refresh runs at a time and changes during it make one more.
  const refresh = async () => {
    if (refreshing) { refreshAgain = true; return; }
    refreshing = true;
    try {
      do {
        refreshAgain = false;
        await Promise.all([drawStats(id, stats, errors, meter), drawTimeline(id, timeline)]);
      } while (refreshAgain);
    } finally { refreshing = false; }
  };
  const show = (progress) => {
    const c = progress.counts;
    const done = finished(c);
    const all = total(c);
    meter.add(done);
    bar.max = Math.max(all, 1);
    bar.value = done;
    // Before a minute of samples, the job's own throughput so far.
    const rate = meter.rate() ?? meter.fallback ?? null;
    const left = c.ready + c.running + c.publishing;
    let text = `${done} of ${all} datums finished`;
    if (!TERMINAL.has(progress.job.status)) {
      text += rate === null ? ' · rate —' : ` · ${rate.toFixed(2)} datums/s`;
      text += rate ? ` · ETA ${duration(Math.round((left / rate) * 1000))}` : '';
    }
    summary.textContent = text;
    fill(counts, ...DATUM_STATUSES.map((s) =>
      el('div', {}, el('dt', {}, s), el('dd', { 'data-count': s }, c[s]))));
    fill(document.getElementById('job-status'), statusBadge(progress.job.status));
    jobError.textContent = progress.job.error_message || '';
    cancel.disabled = TERMINAL.has(progress.job.status);
    retry.disabled = !(TERMINAL.has(progress.job.status) && c.error + c.canceled > 0);
    if (progress.job.status !== lastStatus || !TERMINAL.has(progress.job.status)) refresh();
    lastStatus = progress.job.status;
  };
  drawDatums(id, datums);
  await refresh();
  followProgress(id, show);
}

async function drawStats(id, section, errorsSection, meter) {
  const s = await api(`/v1/jobs/${id}/stats`);
  const pct = (name, p, fmt) => el('tr', {}, el('th', { scope: 'row' }, name),
    p ? [el('td', { class: 'num' }, fmt(p.p50)), el('td', { class: 'num' }, fmt(p.p95)),
      el('td', { class: 'num' }, fmt(p.max)), el('td', { class: 'num' }, p.count)]
      : el('td', { colspan: 4, class: 'muted' }, 'not measured yet'));
  const t = s.throughput;
  fill(section, el('h2', { id: 'stats-h' }, 'Statistics'),
    // A big job is measured over its newest attempts only (`window`).
    el('p', {}, `${s.measured_attempts} attempts measured`,
      s.window ? ` (of the newest ${s.window})` : '', ` · ${t.datums_done} datums done in `,
      `${duration(t.elapsed_ms)} · ${t.datums_per_second.toFixed(2)} datums/s · `,
      `${bytes(t.download_bytes)} down, ${bytes(t.upload_bytes)} up`),
    table([' ', { label: 'p50', num: true }, { label: 'p95', num: true },
      { label: 'max', num: true }, { label: 'attempts', num: true }], [
      pct('Download', s.phases.download, duration),
      pct('Command', s.phases.command, duration),
      pct('Upload', s.phases.upload, duration),
      pct('Peak memory', s.memory_bytes, bytes),
      pct('CPU (millicores)', s.cpu_millicores, (v) => v),
    ]),
    s.suggestion ? el('p', {}, 'Suggested resource_requests: memory ',
      el('code', {}, s.suggestion.memory), ', cpu ', el('code', {}, s.suggestion.cpu),
      ` (p95 × ${s.suggestion.margin}, from ${s.suggestion.attempts} attempts)`) : null,
    s.slowest.length ? [el('h3', {}, 'Slowest attempts'),
      table(['Datum', 'Attempt', 'Outcome', { label: 'Total', num: true },
        { label: 'Command', num: true }], s.slowest.map((a) => el('tr', {},
        el('td', {}, el('a', { href: `/datums/${a.datum_id}` }, a.datum_id)),
        el('td', {}, a.attempt), el('td', {}, a.outcome || 'running'),
        el('td', { class: 'num' }, duration(a.duration_ms)),
        el('td', { class: 'num' }, duration(a.command_ms)))))] : null);
  if (meter.rate() === null && t.datums_per_second > 0) meter.fallback = t.datums_per_second;
  fill(errorsSection, el('h2', { id: 'errors-h' }, 'Errors'),
    s.errors.length === 0 ? el('p', { class: 'muted' }, 'No datum has failed.')
      : table(['Error', { label: 'Datums', num: true }, 'Example'], s.errors.map((g) =>
        el('tr', {}, el('td', { class: 'message' }, g.message), el('td', { class: 'num' }, g.count),
          el('td', {}, el('a', { href: `/datums/${g.example_datum_id}` },
            `datum ${g.example_datum_id}`))))));
}

async function drawTimeline(id, section) {
  const { attempts } = await api(`/v1/jobs/${id}/attempts?limit=500`);
  const heading = el('h2', { id: 'timeline-h' }, 'Attempts by worker');
  if (attempts.length === 0) {
    fill(section, heading, el('p', { class: 'muted' }, 'No attempt yet.'));
    return;
  }
  const now = Date.now();
  const start = Math.min(...attempts.map((a) => a.started_at));
  const end = Math.max(now, ...attempts.map((a) => a.finished_at || now));
  const span = Math.max(end - start, 1);
  const lanes = new Map();
  for (const a of attempts.slice().reverse()) {
    if (!lanes.has(a.worker_id)) lanes.set(a.worker_id, []);
    lanes.get(a.worker_id).push(a);
  }
  const kind = (a) => (a.outcome === null ? 'open' : a.outcome === 'done' ? 'done'
    : ['error', 'timed_out', 'publish_failed'].includes(a.outcome) ? 'failed' : 'other');
  const box = el('div', { class: 'timeline' });
  for (const [worker, list] of lanes) {
    const track = el('div', { class: 'lane-track' });
    for (const a of list) {
      const left = ((a.started_at - start) / span) * 100;
      const width = (((a.finished_at || now) - a.started_at) / span) * 100;
      const label = `datum ${a.datum_id} attempt ${a.number}: ${a.outcome || 'running'}, `
        + `${duration((a.finished_at || now) - a.started_at)}`;
      track.append(el('a', { class: `bar ${kind(a)}`, href: `/datums/${a.datum_id}`,
        style: null, title: label, 'aria-label': label, 'data-left': left, 'data-width': width }));
    }
    box.append(el('div', { class: 'lane' }, el('div', { class: 'lane-name mono' }, worker), track));
  }
  // Positions set through the CSSOM: the page's policy allows no inline style attributes.
  for (const bar of box.querySelectorAll('.bar')) {
    bar.style.left = `${bar.dataset.left}%`;
    bar.style.width = `${bar.dataset.width}%`;
  }
  fill(section, heading,
    el('p', { class: 'muted' }, `The newest ${attempts.length} attempts, from `,
      when(start), '.'),
    el('p', { class: 'legend' },
      ['done', 'open', 'failed', 'other'].map((k) => el('span', {},
        el('span', { class: `swatch bar ${k}` }), { done: 'done', open: 'running',
          failed: 'failed', other: 'interrupted or lost' }[k]))),
    box);
  for (const swatch of section.querySelectorAll('.swatch')) swatch.style.position = 'static';
}

/** The datums table: status and outcome filters, keyset paging by id. */
function drawDatums(id, section) {
  const status = selectField('f-datum-status', 'Status', DATUM_STATUSES, '', 'any');
  const outcome = selectField('f-outcome', 'An attempt ended', OUTCOMES, '', 'any way');
  const body = el('tbody', {});
  const first = el('button', { type: 'button', class: 'secondary' }, 'First page');
  const prev = el('button', { type: 'button', class: 'secondary' }, 'Previous');
  const next = el('button', { type: 'button', class: 'secondary', id: 'datums-next' }, 'Next');
  const where = el('span', { class: 'muted', 'aria-live': 'polite' }, '');
  // `after` of each page shown so far: keyset paging goes back by memory.
  let pages = [null];
  const load = async () => {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const after = pages[pages.length - 1];
    if (after !== null) query.set('after', after);
    const s = status.querySelector('select').value;
    const o = outcome.querySelector('select').value;
    if (s) query.set('status', s);
    if (o) query.set('outcome', o);
    const { datums } = await api(`/v1/jobs/${id}/datums?${query}`);
    fill(body, ...(datums.length ? datums.map((d) => el('tr', { 'data-datum': d.id },
      el('td', {}, el('a', { href: `/datums/${d.id}` }, d.id)),
      el('td', {}, statusBadge(d.status)),
      el('td', { class: 'num' }, `${d.attempt}/${d.max_tries}`),
      el('td', { class: 'hide-narrow mono' }, d.owner || ''),
      el('td', { class: 'hide-narrow' }, d.finished_at ? ago(d.finished_at) : ''),
      el('td', { class: 'message' }, d.error_message || '')))
      : [el('tr', {}, el('td', { colspan: 6, class: 'muted' }, 'No datums match.'))]));
    prev.disabled = pages.length < 2;
    first.disabled = pages.length < 2;
    next.disabled = datums.length < PAGE_SIZE;
    next.dataset.after = datums.length ? datums[datums.length - 1].id : '';
    where.textContent = `page ${pages.length}`;
  };
  const reload = () => { pages = [null]; load().catch((err) => say(err.message)); };
  status.querySelector('select').addEventListener('change', reload);
  outcome.querySelector('select').addEventListener('change', reload);
  first.addEventListener('click', reload);
  prev.addEventListener('click', () => { pages.pop(); load().catch((err) => say(err.message)); });
  next.addEventListener('click', () => {
    pages.push(Number(next.dataset.after));
    load().catch((err) => say(err.message));
  });
  section.append(el('div', { class: 'filters' }, status, outcome),
    el('div', { class: 'table-box' }, el('table', { id: 'datums' },
      el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Datum'),
        el('th', { scope: 'col' }, 'Status'), el('th', { scope: 'col', class: 'num' }, 'Tries'),
        el('th', { scope: 'col', class: 'hide-narrow' }, 'Worker'),
        el('th', { scope: 'col', class: 'hide-narrow' }, 'Finished'),
        el('th', { scope: 'col' }, 'Error'))), body)),
    el('div', { class: 'actions' }, first, prev, next, where));
  load().catch((err) => say(err.message));
}

// ---------------------------------------------------------------------------
// One datum

async function datumPage(main) {
  const id = idFromPath();
  const heading = el('h1', {}, `Datum ${id}`);
  const back = el('p', {});
  const details = el('div', { id: 'datum-details' });
  const summaryLine = el('div', { id: 'datum-summary' });
  const retry = el('button', { type: 'button', id: 'retry-datum' }, 'Retry this datum');
  const attemptSelect = el('select', { id: 'log-attempt' }, el('option', { value: '' }, 'every attempt'));
  const log = el('pre', { class: 'log', id: 'log', tabindex: 0, 'aria-label': 'log',
    'aria-live': 'off' });
  const logState = el('p', { class: 'muted', id: 'log-state', 'aria-live': 'polite' }, '');
  fill(main, back, heading, summaryLine, el('div', { class: 'actions' }, retry),
    el('section', { 'aria-labelledby': 'log-h' }, el('h2', { id: 'log-h' }, 'Log'),
      el('div', { class: 'filters' }, el('div', {}, el('label', { for: 'log-attempt' }, 'Attempt'),
        attemptSelect)), logState, log),
    details);

  let datum = await drawDatum(id, heading, back, details, retry, attemptSelect);
  let stream = null;
  const openLog = () => {
    if (stream) stream.close();
    log.replaceChildren();
    const attempt = attemptSelect.value;
    const query = new URLSearchParams({ follow: 'true' });
    if (attempt) query.set('attempt', attempt);
    logState.textContent = 'Following the log…';
    stream = new EventSource(`/ui/api/v1/datums/${id}/logs?${query}`);
    const atBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    const add = (node) => {
      const stick = atBottom();
      log.append(node);
      if (stick) log.scrollTop = log.scrollHeight;
    };
    stream.addEventListener('line', (event) => {
      const line = JSON.parse(event.data);
      const text = line.text !== undefined ? line.text : `[${line.base64.length} base64 characters of binary output]`;
      // A line keeps its own newline (an unfinished one has none).
      add(el('span', { class: line.stream }, text.endsWith('\n') ? text : `${text}\n`));
    });
    stream.addEventListener('cut', (event) => {
      const cut = JSON.parse(event.data);
      add(el('span', { class: 'cut' }, `[… ${bytes(cut.bytes)} cut by the log cap …]\n`));
    });
    stream.addEventListener('attempt_end', (event) => {
      const end = JSON.parse(event.data);
      const how = end.exit_code !== null && end.exit_code !== undefined ? `, exit code ${end.exit_code}`
        : end.signal ? `, signal ${end.signal}` : '';
      add(el('span', { class: 'end' }, `[attempt ${end.attempt} ended: ${end.outcome}${how}]\n`));
    });
    // The server ends the stream after the last attempt: EventSource would
    // reconnect and replay it all, so an end or an error closes it for good.
    stream.addEventListener('error', () => {
      stream.close();
      logState.textContent = 'The log is complete.';
    });
  };
  attemptSelect.addEventListener('change', openLog);
  retry.addEventListener('click', async () => {
    retry.disabled = true;
    try {
      await api(`/v1/datums/${id}/retry`, { method: 'POST' });
      say(`Datum ${id} will run again.`);
      datum = await drawDatum(id, heading, back, details, retry, attemptSelect);
      openLog();
    } catch (err) { say(err.message); retry.disabled = false; }
  });
  openLog();
  // The datum's state follows its job's progress.
  let seen = JSON.stringify(datum.datum);
  followProgress(datum.datum.job_id, async () => {
    const fresh = await api(`/v1/datums/${id}`);
    if (JSON.stringify(fresh.datum) === seen) return;
    const attempts = datum.attempts.length;
    seen = JSON.stringify(fresh.datum);
    datum = await drawDatum(id, heading, back, details, retry, attemptSelect, fresh);
    // A new attempt started after the stream had ended: follow it too.
    if (datum.attempts.length > attempts && stream && stream.readyState === EventSource.CLOSED) {
      openLog();
    }
  });
}

async function drawDatum(id, heading, back, details, retry, attemptSelect, given) {
  const d = given || await api(`/v1/datums/${id}`);
  document.title = `Datum ${id} · falconeri`;
  fill(heading, `Datum ${id} `, statusBadge(d.datum.status));
  fill(back, el('a', { href: `/jobs/${d.datum.job_id}` }, `← Job ${d.datum.job_id}`));
  // The server retries failed and canceled datums, in a running or an ended job.
  retry.disabled = !['error', 'canceled'].includes(d.datum.status);
  const chosen = attemptSelect.value;
  fill(attemptSelect, el('option', { value: '' }, 'every attempt'),
    d.attempts.map((a) => el('option', { value: a.number, selected: String(a.number) === chosen },
      `attempt ${a.number}`)));
  const stat = (a, key, fmt) => (a.stats && a.stats[key] !== null && a.stats[key] !== undefined
    ? fmt(a.stats[key]) : '—');
  fill(document.getElementById('datum-summary'),
    el('p', {}, `Attempt ${d.datum.attempt} of at most ${d.datum.max_tries}`,
      d.datum.interrupted ? ` (${d.datum.interrupted} interrupted)` : '',
      d.datum.owner && ['running', 'publishing'].includes(d.datum.status)
        ? [' · held by ', el('code', {}, d.datum.owner)] : ''),
    d.datum.error_message ? el('p', { class: 'error', id: 'datum-error' }, d.datum.error_message) : null);
  fill(details,
    el('h2', {}, 'Attempts'),
    table(['#', 'Worker', 'Started', { label: 'Took', num: true }, 'Outcome', 'Error',
      { label: 'Download', num: true }, { label: 'Command', num: true },
      { label: 'CPU user/sys', num: true }, { label: 'Peak memory', num: true },
      { label: 'Upload', num: true }],
    d.attempts.length ? d.attempts.map((a) => el('tr', {},
      el('td', {}, a.number), el('td', { class: 'mono' }, a.worker_id), el('td', {}, when(a.started_at)),
      el('td', { class: 'num' }, a.finished_at ? duration(a.finished_at - a.started_at) : 'running'),
      el('td', {}, a.outcome || 'running',
        a.exit_code !== null && a.exit_code !== undefined ? ` (exit ${a.exit_code})` : '',
        a.signal ? ` (signal ${a.signal})` : ''),
      el('td', { class: 'message' }, a.error_message || ''),
      el('td', { class: 'num' }, stat(a, 'download_files', (v) => `${v} files`), ' ',
        stat(a, 'download_bytes', bytes), ' ', stat(a, 'download_ms', duration)),
      el('td', { class: 'num' }, stat(a, 'command_ms', duration)),
      el('td', { class: 'num' }, stat(a, 'user_cpu_ms', duration), ' / ', stat(a, 'system_cpu_ms', duration)),
      el('td', { class: 'num' }, stat(a, 'max_rss_bytes', bytes)),
      el('td', { class: 'num' }, stat(a, 'upload_files', (v) => `${v} files`), ' ',
        stat(a, 'upload_bytes', bytes), ' ', stat(a, 'upload_ms', duration))))
      : [el('tr', {}, el('td', { colspan: 11, class: 'muted' }, 'Not reserved yet.'))]),
    el('h2', {}, 'Input files'),
    table(['URI', 'Local path'], d.input_files.map((f) => el('tr', {},
      el('td', { class: 'mono message' }, f.uri), el('td', { class: 'mono message' }, f.local_path)))),
    el('h2', {}, 'Output files'),
    d.output_files.length === 0 ? el('p', { class: 'muted' }, 'None yet.')
      : table(['URI', { label: 'Size', num: true }], d.output_files.map((f) => el('tr', {},
        el('td', { class: 'mono message' }, f.uri), el('td', { class: 'num' }, bytes(f.size))))));
  return d;
}

// ---------------------------------------------------------------------------

const PAGES = { jobs: jobsPage, job: jobPage, datum: datumPage };

document.addEventListener('DOMContentLoaded', () => {
  const main = document.getElementById('main');
  const draw = PAGES[document.body.dataset.page];
  draw(main).catch((err) => {
    fill(main, el('p', { class: 'error', role: 'alert' }, `Cannot show this page: ${err.message}`));
  });
});
