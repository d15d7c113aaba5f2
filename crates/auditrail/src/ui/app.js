// auditrail's search page (docs/ui.md). Plain script, no build step.
//
// Every event field is text chosen by whoever emitted the event: it only
// ever reaches the page through textContent, attribute values or
// URLSearchParams, never as markup. The Content Security Policy allows no
// other script, so text that looks like a tag stays text.
'use strict';

(() => {
  const TOKEN_KEY = 'auditrail.token';
  const TZ_KEY = 'auditrail.tz';
  // The `GET /v1/events` filters the page sets, in the API's names; the URL
  // of the page uses the same names, so `/ui?actor=alice` opens that search.
  const FILTERS = ['since', 'until', 'actor', 'event', 'service', 'outcome', 'target', 'text', 'trace_id', 'tenant'];
  const DEFAULT_LIMIT = 100;
  const MAX_PAGE = 1000; // the default `[admin] max_page_size`
  const HEALTH_EVERY_MS = 30000;

  const $ = (id) => document.getElementById(id);

  // ---- state -------------------------------------------------------------

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    tz: localStorage.getItem(TZ_KEY) === 'local' ? 'local' : 'utc',
    filters: {},
    limit: DEFAULT_LIMIT,
    order: 'newest',
    // One cursor per page seen, so that "Newer" goes back exactly.
    cursors: [],
    page: 0,
    events: [],
    hasMore: false,
    selected: -1,
    searching: 0,
  };

  // ---- small DOM helpers (text only) --------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key === 'on') for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // Only http(s) links from the server's trace template become hrefs.
  function safeUrl(url) {
    try {
      const parsed = new URL(url, location.href);
      return parsed.protocol === 'http:' || parsed.protocol === 'https:' ? parsed.href : null;
    } catch (_) {
      return null;
    }
  }

  // ---- the admin API -----------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // Times are Unix nanoseconds, beyond what a JS number holds exactly:
  // read them as strings. (Inside a JSON string every quote is escaped, so
  // this cannot match text inside a value.)
  function parseJson(text) {
    return JSON.parse(text.replace(/([{,]"[a-z_]+_unix_nano"):(\d+)/g, '$1:"$2"'));
  }

  // Paths are relative to the page (`/ui` → `/v1/...`), so the page works
  // behind a proxy that serves auditrail under a prefix.
  async function api(path, { method = 'GET', token = state.token } = {}) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    let response;
    try {
      // No cookie or HTTP auth is ever sent: the admin API takes neither.
      response = await fetch(path, { method, headers, credentials: 'omit', cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, 'auditrail did not answer (' + e.message + ')');
    }
    const text = await response.text();
    let body = null;
    try {
      body = parseJson(text);
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const message = (body && body.error) || text.trim() || response.statusText;
      throw new ApiError(response.status, message);
    }
    if (body === null) throw new ApiError(response.status, 'the answer is not JSON');
    return body;
  }

  // ---- times -------------------------------------------------------------

  const pad = (n, width = 2) => String(n).padStart(width, '0');

  function parts(ns) {
    const big = BigInt(ns || '0');
    return { date: new Date(Number(big / 1000000n)), frac: pad((big % 1000000000n).toString(), 9) };
  }

  function utcText(ns, digits = 3) {
    const { date, frac } = parts(ns);
    const iso = date.toISOString();
    return iso.slice(0, 10) + ' ' + iso.slice(11, 19) + (digits ? '.' + frac.slice(0, digits) : '');
  }

  function offsetText(date) {
    const minutes = -date.getTimezoneOffset();
    const sign = minutes >= 0 ? '+' : '-';
    const abs = Math.abs(minutes);
    return 'UTC' + sign + pad(Math.floor(abs / 60)) + ':' + pad(abs % 60);
  }

  function localText(ns, digits = 3, withOffset = false) {
    const { date: d, frac } = parts(ns);
    const text = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
      pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) +
      (digits ? '.' + frac.slice(0, digits) : '');
    return withOffset ? text + ' ' + offsetText(d) : text;
  }

  // RFC 3339 with all nine digits, for `until` when paging back in time.
  function rfc3339(ns) {
    const { date, frac } = parts(ns);
    return date.toISOString().slice(0, 19) + '.' + frac + 'Z';
  }

  function shownTime(ns) {
    return state.tz === 'utc' ? utcText(ns) : localText(ns);
  }

  function otherTime(ns) {
    return state.tz === 'utc' ? localText(ns, 3, true) : utcText(ns) + ' UTC';
  }

  function ago(ns) {
    const seconds = Math.max(0, (Date.now() - parts(ns).date.getTime()) / 1000);
    if (seconds < 90) return Math.round(seconds) + ' s ago';
    if (seconds < 5400) return Math.round(seconds / 60) + ' min ago';
    if (seconds < 129600) return Math.round(seconds / 3600) + ' h ago';
    return Math.round(seconds / 86400) + ' d ago';
  }

  // ---- the search form and the URL ---------------------------------------

  function readForm() {
    const filters = {};
    for (const name of FILTERS) {
      const value = $('f-' + name).value.trim();
      if (value) filters[name] = name === 'trace_id' ? value.toLowerCase() : value;
    }
    return { filters, limit: Number($('f-limit').value) || DEFAULT_LIMIT, order: $('f-order').value };
  }

  function writeForm({ filters, limit, order }) {
    for (const name of FILTERS) $('f-' + name).value = filters[name] || '';
    const limitText = String(limit);
    const select = $('f-limit');
    if (![...select.options].some((o) => o.value === limitText)) select.append(el('option', { text: limitText }));
    select.value = limitText;
    $('f-order').value = order;
  }

  function fromUrl() {
    const params = new URLSearchParams(location.search);
    const filters = {};
    for (const name of FILTERS) {
      const value = (params.get(name) || '').trim();
      if (value) filters[name] = name === 'trace_id' ? value.toLowerCase() : value;
    }
    let limit = parseInt(params.get('limit') || '', 10);
    if (!(limit > 0)) limit = DEFAULT_LIMIT;
    limit = Math.min(limit, MAX_PAGE);
    const order = params.get('order') === 'seq' ? 'seq' : 'newest';
    return { filters, limit, order };
  }

  function searchParams({ filters, limit, order }) {
    const params = new URLSearchParams();
    for (const name of FILTERS) if (filters[name]) params.set(name, filters[name]);
    if (limit !== DEFAULT_LIMIT) params.set('limit', String(limit));
    if (order !== 'newest') params.set('order', order);
    return params;
  }

  // The URL always says what is shown, so it can be shared or bookmarked.
  function updateUrl() {
    const query = searchParams(state).toString();
    history.replaceState(null, '', location.pathname + (query ? '?' + query : ''));
  }

  // ---- searching and paging ----------------------------------------------

  function startSearch(search) {
    state.filters = search.filters;
    state.limit = search.limit;
    state.order = search.order;
    state.cursors = [state.order === 'seq' ? { afterSeq: '0' } : { until: search.filters.until, exclude: [] }];
    state.page = 0;
    updateUrl();
    return loadPage();
  }

  function eventKey(e) {
    return e.node + '\u0000' + e.seq;
  }

  async function loadPage() {
    const cursor = state.cursors[state.page];
    const params = new URLSearchParams();
    for (const name of FILTERS) if (state.filters[name]) params.set(name, state.filters[name]);
    let asked = state.limit;
    if (state.order === 'seq') {
      params.set('after_seq', cursor.afterSeq);
    } else {
      if (cursor.until) params.set('until', cursor.until);
      // Events at the boundary time that the page before showed come again
      // (`until` is inclusive): ask for that many more and drop them.
      asked = Math.min(state.limit + cursor.exclude.length, MAX_PAGE);
    }
    params.set('limit', String(asked));
    const ticket = ++state.searching;
    setBusy(true);
    hideNotice();
    const started = performance.now();
    let page;
    try {
      page = await api('v1/events?' + params.toString());
    } catch (e) {
      if (ticket !== state.searching) return;
      setBusy(false);
      showApiError(e);
      state.events = [];
      state.hasMore = false;
      render();
      $('summary').textContent = 'Search failed';
      return;
    }
    if (ticket !== state.searching) return;
    setBusy(false);
    const elapsed = Math.round(performance.now() - started);
    let events = page.events || [];
    if (state.order === 'seq') {
      state.hasMore = page.complete === false || events.length >= asked;
      state.cursors[state.page + 1] = { afterSeq: String(page.next_after_seq) };
      if (page.complete === false && page.error) showNotice(page.error, 'info');
    } else {
      const seen = new Set(cursor.exclude);
      const full = events.length >= asked;
      events = events.filter((e) => !seen.has(eventKey(e))).reverse();
      state.hasMore = full;
      if (events.length) {
        const oldest = events[events.length - 1];
        const boundary = events.filter((e) => e.time_unix_nano === oldest.time_unix_nano).map(eventKey);
        const carried = cursor.until === rfc3339(oldest.time_unix_nano) ? cursor.exclude : [];
        state.cursors[state.page + 1] = { until: rfc3339(oldest.time_unix_nano), exclude: carried.concat(boundary) };
      } else if (full) {
        state.hasMore = false;
        showNotice('More events than a page holds share one timestamp here; read them in seq order (Order: seq).', 'info');
      }
    }
    state.events = events;
    state.selected = events.length ? 0 : -1;
    render();
    summarize(page, elapsed);
    if (!$('detail').hidden) {
      if (events.length) openDetail(0, false);
      else closeDetail();
    }
  }

  function summarize(page, elapsed) {
    const n = state.events.length;
    const first = state.page * state.limit + 1;
    let text;
    if (!n) text = state.page ? 'No more events' : 'No events match';
    else if (!state.page && !state.hasMore) text = n + (n === 1 ? ' event' : ' events');
    else text = 'Events ' + first + '–' + (first + n - 1) + (state.hasMore ? '' : ' (the last)');
    text += state.order === 'seq' ? ' · in seq order' : ' · newest first';
    const active = FILTERS.filter((f) => state.filters[f]).length;
    text += active ? ' · ' + active + (active === 1 ? ' filter' : ' filters') : ' · no filter';
    text += ' · ' + elapsed + ' ms';
    if (page && page.last_seq !== undefined) text += ' · spool at seq ' + page.last_seq;
    $('summary').textContent = text;
    $('page-prev').disabled = state.page === 0;
    $('page-next').disabled = !state.hasMore;
    $('page-prev').textContent = state.order === 'seq' ? '‹ Previous' : '‹ Newer';
    $('page-next').textContent = state.order === 'seq' ? 'Next ›' : 'Older ›';
  }

  function turnPage(delta) {
    if (delta > 0 && !state.hasMore) return;
    if (delta < 0 && state.page === 0) return;
    state.page += delta;
    loadPage();
  }

  function setBusy(busy) {
    document.body.classList.toggle('busy', busy);
    $('search-go').disabled = busy;
  }

  // ---- notices -----------------------------------------------------------

  function showNotice(message, kind = 'error', extra) {
    const notice = $('notice');
    clear(notice);
    notice.className = 'notice ' + kind;
    notice.append(el('span', { text: message }));
    if (extra) notice.append(' ', extra);
    notice.hidden = false;
  }

  function hideNotice() {
    $('notice').hidden = true;
  }

  function showApiError(e) {
    if (e.status === 401) {
      showNotice(
        state.token
          ? 'auditrail refused this token: ' + e.message
          : 'This auditrail needs a bearer token: paste the operator\'s token or a tenant\'s token above.',
        'error',
      );
      $('token').focus();
    } else if (e.status === 429) {
      showNotice('auditrail is busy with other queries: ' + e.message, 'error');
    } else {
      showNotice(e.message + (e.status ? ' (HTTP ' + e.status + ')' : ''), 'error');
    }
  }

  // ---- the results table -------------------------------------------------

  function outcomeBadge(outcome) {
    const known = ['success', 'failure', 'unknown'].includes(outcome) ? outcome : 'unknown';
    return el('span', { class: 'badge outcome-' + known, text: outcome || 'unknown' });
  }

  function actorCell(e) {
    if (e.actor_id && e.actor_name && e.actor_name !== e.actor_id) {
      return [el('span', { text: e.actor_name }), ' ', el('span', { class: 'muted mono', text: e.actor_id })];
    }
    return [el('span', { text: e.actor_id || e.actor_name || '—', class: e.actor_id || e.actor_name ? '' : 'muted' })];
  }

  function traceCell(e) {
    if (!e.trace_id) return el('span', { class: 'muted', text: '—' });
    // Both ends: some tracers put a timestamp in the first bytes.
    const short = e.trace_id.slice(0, 6) + '…' + e.trace_id.slice(-4);
    const href = e.trace_url && safeUrl(e.trace_url);
    if (href) {
      return el('a', {
        href, target: '_blank', rel: 'noopener noreferrer', class: 'mono',
        title: 'Open trace ' + e.trace_id, text: short,
        on: { click: (ev) => ev.stopPropagation() },
      });
    }
    return el('span', { class: 'mono', title: e.trace_id, text: short });
  }

  function oneLine(text, max = 300) {
    const flat = String(text || '').replace(/\s+/g, ' ').trim();
    return flat.length > max ? flat.slice(0, max) + '…' : flat;
  }

  function render() {
    const rows = $('rows');
    clear(rows);
    $('th-time').textContent = state.tz === 'utc' ? 'Time (UTC)' : 'Time (local)';
    state.events.forEach((e, i) => {
      const row = el('tr', {
        tabindex: i === state.selected ? 0 : -1,
        class: 'row' + (i === state.selected ? ' selected' : '') + (e.severity_number >= 13 ? ' warn' : ''),
        'data-index': i,
        'aria-selected': i === state.selected ? 'true' : 'false',
        on: { click: () => openDetail(i, true) },
      },
      el('td', { class: 'c-time mono', title: otherTime(e.time_unix_nano) }, shownTime(e.time_unix_nano)),
      el('td', { class: 'c-outcome' }, outcomeBadge(e.outcome)),
      el('td', { class: 'c-event', title: e.event_name }, e.event_name || '—'),
      el('td', { class: 'c-actor', title: [e.actor_name, e.actor_id].filter(Boolean).join(' · ') }, ...actorCell(e)),
      el('td', { class: 'c-service', title: e.service_name }, e.service_name),
      el('td', { class: 'c-target mono', title: e.target }, e.target),
      el('td', { class: 'c-client mono', title: e.client_address }, e.client_address),
      el('td', { class: 'c-body', title: oneLine(e.body, 1000) }, oneLine(e.body)),
      el('td', { class: 'c-trace' }, traceCell(e)));
      rows.append(row);
    });
    $('empty').hidden = state.events.length > 0;
  }

  // Marks row `i` as the selected one (one tab stop for the table).
  function markSelected(i, focus) {
    state.selected = i;
    for (const row of $('rows').children) {
      const on = Number(row.dataset.index) === i;
      row.classList.toggle('selected', on);
      row.tabIndex = on ? 0 : -1;
      row.setAttribute('aria-selected', on ? 'true' : 'false');
      if (on) {
        if (focus) row.focus({ preventScroll: true });
        row.scrollIntoView({ block: 'nearest' });
      }
    }
  }

  // Moves the selection (keys j/k); an open detail view follows it.
  function select(index) {
    if (!state.events.length) return;
    const i = Math.max(0, Math.min(state.events.length - 1, index));
    markSelected(i, true);
    if (!$('detail').hidden) openDetail(i, false);
  }

  // ---- the detail view ---------------------------------------------------

  function searchFor(name, value) {
    const next = { filters: {}, limit: state.limit, order: state.order };
    for (const keep of ['since', 'until', 'tenant']) if (state.filters[keep]) next.filters[keep] = state.filters[keep];
    next.filters[name] = value;
    writeForm(next);
    startSearch(next);
  }

  function filterButton(name, value, label) {
    if (!value) return null;
    return el('button', {
      type: 'button', class: 'link filter', 'data-filter': name,
      title: 'Search all events with this ' + label,
      text: 'search',
      on: { click: () => searchFor(name, value) },
    });
  }

  function kvRow(dl, key, value, options = {}) {
    const dd = el('dd', { class: options.mono ? 'mono' : '' });
    if (value instanceof Node) dd.append(value);
    else dd.append(el('span', { class: value === '' || value === undefined ? 'muted' : '', text: value === '' || value === undefined ? '—' : String(value) }));
    if (options.extra) dd.append(' ', options.extra);
    if (options.sub) dd.append(el('div', { class: 'muted sub', text: options.sub }));
    dl.append(el('dt', { text: key }), dd);
  }

  function attributesTable(json) {
    let parsed;
    try {
      parsed = JSON.parse(json || '{}');
    } catch (_) {
      return el('pre', { class: 'block', text: json });
    }
    const keys = Object.keys(parsed || {});
    if (!keys.length) return el('p', { class: 'muted', text: 'none' });
    const body = el('tbody');
    for (const key of keys.sort()) {
      const value = parsed[key];
      const text = typeof value === 'string' ? value : JSON.stringify(value);
      body.append(el('tr', {}, el('th', { class: 'mono', text: key }), el('td', { class: 'mono', text })));
    }
    return el('table', { class: 'attrs' }, body);
  }

  function section(title, ...content) {
    return el('section', { class: 'd-section' }, el('h3', { text: title }), ...content);
  }

  function rawJson(e) {
    return JSON.stringify(e, null, 2).replace(/("[a-z_]+_unix_nano"): "(\d+)"/g, '$1: $2');
  }

  async function downloadProof(e, button) {
    button.disabled = true;
    try {
      const proof = await api('v1/proof?seq=' + encodeURIComponent(e.seq));
      const blob = new Blob([JSON.stringify(proof, null, 2) + '\n'], { type: 'application/json' });
      const link = el('a', { href: URL.createObjectURL(blob), download: 'proof-' + e.node + '-' + e.seq + '.json' });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (err) {
      showApiError(err);
    } finally {
      button.disabled = false;
    }
  }

  function openDetail(index, focus) {
    const e = state.events[index];
    if (!e) return;
    if (state.selected !== index) markSelected(index, false);
    const body = $('d-body');
    clear(body);
    $('d-title').textContent = e.event_name || 'event';
    const head = el('div', { class: 'd-head' }, outcomeBadge(e.outcome),
      el('span', { class: 'mono', text: utcText(e.time_unix_nano, 9) + ' UTC' }));
    body.append(head);

    const who = el('dl', { class: 'kv' });
    kvRow(who, 'Actor id', e.actor_id, { mono: true, extra: filterButton('actor', e.actor_id, 'actor') });
    kvRow(who, 'Actor name', e.actor_name, { extra: e.actor_name !== e.actor_id ? filterButton('actor', e.actor_name, 'actor') : null });
    kvRow(who, 'Client', e.client_address, { mono: true });
    kvRow(who, 'Event', e.event_name, { extra: filterButton('event', e.event_name, 'event name') });
    kvRow(who, 'Outcome', e.outcome);
    kvRow(who, 'Target', e.target, { mono: true, extra: filterButton('target', e.target, 'target') });
    kvRow(who, 'Service', e.service_name, { extra: filterButton('service', e.service_name, 'service') });
    kvRow(who, 'Tenant', e.tenant);
    kvRow(who, 'Severity', [e.severity_text, e.severity_number ? '(' + e.severity_number + ')' : ''].filter(Boolean).join(' '));
    kvRow(who, 'Scope', e.scope_name, { mono: true });
    body.append(section('Who and what', who));

    const when = el('dl', { class: 'kv' });
    kvRow(when, 'Time', utcText(e.time_unix_nano, 9) + ' UTC', { mono: true, sub: localText(e.time_unix_nano, 9, true) + ' · ' + e.time_unix_nano + ' ns' });
    kvRow(when, 'Observed', e.observed_time_unix_nano && e.observed_time_unix_nano !== '0' ? utcText(e.observed_time_unix_nano, 9) + ' UTC' : '', { mono: true });
    kvRow(when, 'Received', utcText(e.received_time_unix_nano, 9) + ' UTC', { mono: true, sub: localText(e.received_time_unix_nano, 9, true) });
    body.append(section('When', when));

    const trace = el('dl', { class: 'kv' });
    const href = e.trace_url && safeUrl(e.trace_url);
    const traceValue = e.trace_id && href
      ? el('a', { href, target: '_blank', rel: 'noopener noreferrer', class: 'mono', id: 'd-trace-link', text: e.trace_id })
      : e.trace_id;
    kvRow(trace, 'Trace id', traceValue, { mono: true, extra: filterButton('trace_id', e.trace_id, 'trace id') });
    kvRow(trace, 'Span id', e.span_id, { mono: true });
    kvRow(trace, 'Flags', e.trace_flags === undefined ? '' : String(e.trace_flags), { mono: true });
    body.append(section('Trace', trace));

    body.append(section('Body', e.body ? el('pre', { class: 'block', id: 'd-body-text', text: e.body }) : el('p', { class: 'muted', text: 'empty' })));
    body.append(section('Attributes', attributesTable(e.attributes)));
    body.append(section('Resource attributes', attributesTable(e.resource_attributes)));

    const integrity = el('dl', { class: 'kv' });
    kvRow(integrity, 'Node', e.node, { mono: true });
    kvRow(integrity, 'Seq', String(e.seq), { mono: true });
    kvRow(integrity, 'Event id', e.event_id, { mono: true });
    kvRow(integrity, 'Hash', e.hash, { mono: true });
    kvRow(integrity, 'Prev hash', e.prev_hash, { mono: true });
    const proof = el('button', { type: 'button', text: 'Download inclusion proof' });
    proof.addEventListener('click', () => downloadProof(e, proof));
    body.append(section('Integrity', integrity, proof));

    body.append(el('details', { class: 'd-section' }, el('summary', { text: 'JSON' }), el('pre', { class: 'block', text: rawJson(e) })));

    const detail = $('detail');
    detail.hidden = false;
    document.body.classList.add('detail-open');
    detail.scrollTop = 0;
    if (focus) detail.focus({ preventScroll: true });
  }

  function closeDetail() {
    $('detail').hidden = true;
    document.body.classList.remove('detail-open');
    const row = $('rows').children[state.selected];
    if (row) row.focus({ preventScroll: true });
  }

  // ---- health and integrity ----------------------------------------------

  function setPill(id, text, kind, title) {
    const pill = $(id);
    pill.textContent = text;
    pill.className = 'pill ' + (kind || '');
    pill.title = title || '';
  }

  // `/readyz` answers loopback clients without a token, and needs the
  // operator's from elsewhere (a tenant's token may not read every sink).
  async function readyz() {
    try {
      return await api('readyz', { token: '' });
    } catch (e) {
      if (e.status === 503) throw e;
      if (!state.token || (e.status !== 401 && e.status !== 403)) throw e;
      return api('readyz');
    }
  }

  async function loadHealth() {
    let ready = null;
    try {
      ready = await readyz();
    } catch (e) {
      ready = null;
      setPill('pill-spool', 'Spool: ?', 'grey', e.message);
      setPill('pill-sinks', 'Sinks: ?', 'grey', e.message);
      $('sinks-note').textContent = 'Sink health needs the operator\'s token from off the host (' + e.message + ').';
      $('sinks-note').hidden = false;
    }
    if (ready) renderReady(ready);
  }

  function renderReady(ready) {
    const spool = ready.spool || {};
    setPill('pill-spool', spool.accepting ? 'Spool: accepting' : 'Spool: refusing', spool.accepting ? 'ok' : 'bad', spool.error || '');
    const info = $('spool-info');
    clear(info);
    kvRow(info, 'Accepting', spool.accepting ? 'yes' : 'no');
    if (spool.error) kvRow(info, 'Error', spool.error);
    const id = spool.identity;
    if (id && typeof id === 'object') {
      kvRow(info, 'Spool id', id.spool_id, { mono: true });
      kvRow(info, 'Created', id.created_unix_nano ? utcText(id.created_unix_nano, 0) + ' UTC' : '', { mono: true });
      kvRow(info, 'First seq', id.first_seq === undefined ? '' : String(id.first_seq), { mono: true });
    }

    const sinks = ready.sinks || [];
    const rows = $('sink-rows');
    clear(rows);
    let unhealthy = 0;
    let dead = 0;
    for (const s of sinks) {
      if (!s.healthy) unhealthy += 1;
      dead += s.dead_letters || 0;
      rows.append(el('tr', { class: s.healthy ? '' : 'bad-row' },
        el('td', { class: 'mono', text: s.name }),
        el('td', { text: s.type }),
        el('td', {}, el('span', { class: 'badge ' + (s.healthy ? 'outcome-success' : 'outcome-failure'), text: s.state })),
        el('td', { class: 'num', text: String(s.lag_events) }),
        el('td', { class: 'num', text: Number(s.lag_seconds || 0).toFixed(1) }),
        el('td', { class: 'num' + (s.dead_letters ? ' warn-text' : ''), text: String(s.dead_letters) }),
        el('td', { class: 'error-text', text: s.last_error || '' })));
    }
    for (const r of ready.removed_sinks || []) {
      rows.append(el('tr', { class: 'muted' },
        el('td', { class: 'mono', text: r.name }), el('td', { text: 'removed' }), el('td', { text: 'not configured' }),
        el('td', { class: 'num', text: '' }), el('td', { class: 'num', text: '' }),
        el('td', { class: 'num', text: String(r.dead_letters || 0) }), el('td', { text: '' })));
    }
    if (!sinks.length) rows.append(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'No sinks configured: events stay in the local spool.' })));
    $('sinks-note').hidden = true;
    const kind = unhealthy ? 'bad' : dead ? 'warn' : 'ok';
    let text = sinks.length ? 'Sinks: ' + (sinks.length - unhealthy) + '/' + sinks.length + ' healthy' : 'Sinks: none';
    if (dead) text += ' · ' + dead + ' dead';
    setPill('pill-sinks', text, sinks.length ? kind : 'grey');
  }

  async function loadVerify() {
    const info = $('verify-info');
    clear(info);
    try {
      const checkpoints = await api('v1/checkpoints');
      const list = checkpoints.checkpoints || [];
      kvRow(info, 'Signed checkpoints', list.length ? list.length + ', the latest covering ' + list[list.length - 1].size + ' events' : 'none (no [integrity] key_file, or none signed yet)');
    } catch (e) {
      kvRow(info, 'Signed checkpoints', e.message);
    }
    // Each `POST /v1/verify` leaves an `auditrail.verify` event in the
    // trail: the newest one is the verify status (no separate state).
    let last = null;
    try {
      const page = await api('v1/events?event=auditrail.verify&limit=1');
      last = (page.events || [])[0] || null;
    } catch (e) {
      kvRow(info, 'Last verify', e.message);
      setPill('pill-verify', 'Verify: ?', 'grey', e.message);
      return;
    }
    if (!last) {
      kvRow(info, 'Last verify', 'none seen (none run, or not visible to this token)');
      setPill('pill-verify', 'Verify: not run', 'grey', 'No verify run is recorded in the trail');
    } else {
      let attrs = {};
      try {
        attrs = JSON.parse(last.attributes || '{}');
      } catch (_) {
        attrs = {};
      }
      const intact = last.outcome === 'success';
      const summary = attrs['auditrail.verify.summary'] || last.body;
      kvRow(info, 'Last verify', (intact ? 'intact' : 'TAMPERING FOUND') + ', ' + ago(last.time_unix_nano),
        { sub: utcText(last.time_unix_nano, 0) + ' UTC by ' + (last.actor_id || 'anonymous') });
      kvRow(info, 'Summary', summary);
      setPill('pill-verify', intact ? 'Verified: intact · ' + ago(last.time_unix_nano) : 'Verify: tampering found',
        intact ? 'ok' : 'bad', summary);
    }
  }

  function renderVerifyControls() {
    const canRun = Boolean(state.token);
    $('verify-run').hidden = !canRun;
    $('verify-note').textContent = canRun
      ? 'A verify reads every event in the spool; it needs the operator\'s token and is recorded in the trail.'
      : 'To verify now, run `auditrail verify --admin URL`, or, where auditrail takes credentials, enter the operator\'s token above (without credentials it refuses state changes from a web page).';
  }

  async function runVerify() {
    const button = $('verify-run');
    const report = $('verify-report');
    button.disabled = true;
    report.hidden = false;
    report.textContent = 'Verifying…';
    try {
      const answer = await api('v1/verify', { method: 'POST' });
      report.textContent = answer.report || (answer.intact ? 'chain intact' : 'tampering found');
      report.className = 'report ' + (answer.intact ? 'ok' : 'bad');
    } catch (e) {
      report.textContent = e.message;
      report.className = 'report bad';
    } finally {
      button.disabled = false;
    }
    loadVerify();
  }

  async function loadDeadLetters() {
    const table = $('dead-letters');
    const rows = $('dead-letter-rows');
    clear(rows);
    table.hidden = false;
    try {
      const answer = await api('v1/dead-letters');
      const letters = answer.dead_letters || [];
      if (!letters.length) rows.append(el('tr', {}, el('td', { colspan: 5, class: 'muted', text: 'No dead letters.' })));
      for (const d of letters) {
        const e = d.event || {};
        rows.append(el('tr', {},
          el('td', { class: 'mono', text: d.sink }),
          el('td', { class: 'num mono', text: String(d.seq) }),
          el('td', { class: 'mono', text: utcText(d.dead_lettered_unix_nano, 0) }),
          el('td', { class: 'error-text', text: d.reason + (d.replay ? ' (replay requested)' : '') }),
          el('td', { text: [e.event_name, e.actor_id].filter(Boolean).join(' · ') })));
      }
    } catch (e) {
      rows.append(el('tr', {}, el('td', { colspan: 5, class: 'error-text', text: e.message })));
    }
  }

  function toggleStatus(show) {
    const status = $('status');
    status.hidden = show === undefined ? !status.hidden : !show;
    if (!status.hidden) {
      loadHealth();
      loadVerify();
      status.scrollIntoView({ block: 'nearest' });
    }
  }

  // ---- token -------------------------------------------------------------

  function renderToken() {
    $('token').value = state.token;
    $('token-forget').hidden = !state.token;
    renderVerifyControls();
  }

  function useToken(token) {
    state.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    renderToken();
    refreshAll();
  }

  // ---- wiring ------------------------------------------------------------

  function setTz(tz) {
    state.tz = tz;
    localStorage.setItem(TZ_KEY, tz);
    $('tz-utc').setAttribute('aria-pressed', tz === 'utc' ? 'true' : 'false');
    $('tz-local').setAttribute('aria-pressed', tz === 'local' ? 'true' : 'false');
    render();
    if (!$('detail').hidden && state.selected >= 0) openDetail(state.selected, false);
  }

  async function copyLink() {
    try {
      await navigator.clipboard.writeText(location.href);
      showNotice('Link copied: ' + location.href, 'info');
    } catch (_) {
      showNotice('Link to this search: ' + location.href, 'info');
    }
  }

  function typing(target) {
    return target && (target.tagName === 'INPUT' || target.tagName === 'SELECT' || target.tagName === 'TEXTAREA');
  }

  function onKey(ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === 'Escape') {
      if (!$('detail').hidden) closeDetail();
      else if (typing(ev.target)) ev.target.blur();
      else if (!$('status').hidden) toggleStatus(false);
      return;
    }
    if (typing(ev.target)) return;
    switch (ev.key) {
      case '/':
        ev.preventDefault();
        $('f-actor').focus();
        $('f-actor').select();
        break;
      case 'j':
      case 'ArrowDown':
        ev.preventDefault();
        select(state.selected + 1);
        break;
      case 'k':
      case 'ArrowUp':
        ev.preventDefault();
        select(state.selected - 1);
        break;
      case 'Enter':
      case 'o':
        if (ev.target && ev.target.tagName === 'BUTTON') return;
        if (ev.target && ev.target.tagName === 'A') return;
        if (state.selected >= 0) {
          ev.preventDefault();
          openDetail(state.selected, false);
        }
        break;
      case ']':
        turnPage(1);
        break;
      case '[':
        turnPage(-1);
        break;
      case 'h':
        toggleStatus();
        break;
      default:
    }
  }

  function refreshAll() {
    loadPage();
    loadHealth();
    loadVerify();
  }

  function init() {
    renderToken();
    setTz(state.tz);
    const initial = fromUrl();
    writeForm(initial);

    $('search').addEventListener('submit', (ev) => {
      ev.preventDefault();
      startSearch(readForm());
    });
    $('search-clear').addEventListener('click', () => {
      const empty = { filters: {}, limit: DEFAULT_LIMIT, order: 'newest' };
      writeForm(empty);
      startSearch(empty);
    });
    $('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      useToken($('token').value.trim());
    });
    $('token-forget').addEventListener('click', () => useToken(''));
    $('page-prev').addEventListener('click', () => turnPage(-1));
    $('page-next').addEventListener('click', () => turnPage(1));
    $('tz-utc').addEventListener('click', () => setTz('utc'));
    $('tz-local').addEventListener('click', () => setTz('local'));
    $('copy-link').addEventListener('click', copyLink);
    $('detail-close').addEventListener('click', closeDetail);
    for (const pill of document.querySelectorAll('[data-opens="status"]')) pill.addEventListener('click', () => toggleStatus(true));
    $('status-close').addEventListener('click', () => toggleStatus(false));
    $('status-refresh').addEventListener('click', () => { loadHealth(); loadVerify(); });
    $('verify-run').addEventListener('click', runVerify);
    $('dead-letters-show').addEventListener('click', loadDeadLetters);
    $('rows').addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && ev.target.dataset && ev.target.dataset.index !== undefined) {
        ev.preventDefault();
        ev.stopPropagation();
        openDetail(Number(ev.target.dataset.index), true);
      }
    });
    document.addEventListener('keydown', onKey);

    startSearch(initial);
    loadHealth();
    loadVerify();
    setInterval(loadHealth, HEALTH_EVERY_MS);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
