// The live call log page (/calls): lists an organization's calls in a time range, then
// follows its feed of session changes. Plain JavaScript, no build step, nothing loaded from
// elsewhere (the page's Content-Security-Policy admits only this service's own script,
// style and connections).
//
// How the key travels: it is read from the URL fragment (#org=1&key=tck_…, which a browser
// never sends to a server) or the form, kept in this tab's sessionStorage, and sent only in
// an Authorization header by fetch(). EventSource cannot send headers, so the feed is read
// with fetch() as a stream and its Server-Sent Events are parsed here; when streaming keeps
// failing (a proxy that buffers, say) the page polls the same feed with ?mode=poll instead.
//
// Hooks the browser test relies on: each row is <tr data-call-sid data-status>, and the live
// indicator carries data-live="connected|polling|offline".
'use strict';

(() => {
  const STORAGE_KEY = 'tiercache.calls.auth';
  const RANGE_KEY = 'tiercache.calls.range';
  // Reconnection backoff for the stream, doubled per failure up to the cap.
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  // Stream failures in a row (with nothing received) after which the page polls instead.
  const STREAM_FAILURES_BEFORE_POLLING = 3;
  const POLL_EVERY_MS = 2000;
  // While polling, how many polls before trying the stream again.
  const POLLS_BEFORE_STREAM_RETRY = 30;
  // A stream silent this long is dead (the server sends a comment every 15 s).
  const STREAM_IDLE_MS = 45000;

  const STATUS_LABELS = {
    in_progress: 'In progress',
    transferring: 'Transferring',
    transferred: 'Transferred',
    ended: 'Ended',
  };
  const GREETING_LABELS = {
    lead: 'Known caller',
    new_caller: 'New caller',
    deadline_default: 'Default (deadline)',
  };
  const EVENT_LABELS = {
    call_started: 'Started',
    call_authenticated: 'Authenticated',
    authentication_failed: 'Authentication failed',
    intent_detected: 'Intent detected',
    transfer_initiated: 'Transfer initiated',
    transfer_completed: 'Transfer completed',
    call_ended: 'Ended',
  };


  const $ = (id) => document.getElementById(id);

  // ---- the key ---------------------------------------------------------------------------

  // Takes org and key from the fragment (then removes it from the address bar and history),
  // else from sessionStorage.
  function readAuth() {
    const hash = window.location.hash.replace(/^#/, '');
    if (hash) {
      const params = new URLSearchParams(hash);
      const org = params.get('org');
      const key = params.get('key');
      history.replaceState(null, '', window.location.pathname + window.location.search);
      if (org && key && /^[0-9]+$/.test(org)) {
        saveAuth({ org, key });
        return { org, key };
      }
    }
    try {
      const stored = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || 'null');
      if (stored && /^[0-9]+$/.test(stored.org) && typeof stored.key === 'string') {
        return stored;
      }
    } catch (_) {
      // A corrupt entry is no entry.
    }
    return null;
  }

  function saveAuth(auth) {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(auth));
  }

  function forgetAuth() {
    sessionStorage.removeItem(STORAGE_KEY);
  }

  // ---- formatting --------------------------------------------------------------------------

  const timeFormat = new Intl.DateTimeFormat(undefined, {
    hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
  const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
    month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });

  function formatTime(iso) {
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return '';
    const today = new Date();
    const sameDay = at.toDateString() === today.toDateString();
    return (sameDay ? timeFormat : dateTimeFormat).format(at);
  }

  function formatDuration(seconds) {
    const total = Math.max(0, Math.round(seconds));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = total % 60;
    const pad = (n) => String(n).padStart(2, '0');
    return h > 0 ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
  }

  function timeElement(iso) {
    const el = document.createElement('time');
    el.dateTime = iso;
    el.textContent = formatTime(iso);
    el.title = new Date(iso).toString();
    return el;
  }

  // ---- the table ---------------------------------------------------------------------------

  // call_sid -> { session, row }. Rows are kept newest first by started_at.
  const rows = new Map();

  function cursorOf(session) {
    const n = Number(session.cursor);
    return Number.isFinite(n) ? n : 0;
  }

  function startedMs(session) {
    return Date.parse(session.started_at) || 0;
  }

  // Whether row a's call sorts before b's: newest start first, then by sid for stability.
  function sortsBefore(a, b) {
    const d = startedMs(a) - startedMs(b);
    return d !== 0 ? d > 0 : a.call_sid < b.call_sid;
  }

  function cell(row, content, className) {
    const td = document.createElement('td');
    if (className) td.className = className;
    if (content instanceof Node) td.append(content);
    else td.textContent = content;
    row.append(td);
    return td;
  }

  function muted(text) {
    const span = document.createElement('span');
    span.className = 'muted';
    span.textContent = text;
    return span;
  }

  function callerOf(session) {
    if (session.lead_id !== null && session.lead_id !== undefined) {
      return `Lead #${session.lead_id}`;
    }
    return session.caller || muted('Unknown');
  }

  function fillRow(row, session) {
    row.replaceChildren();
    row.dataset.callSid = session.call_sid;
    row.dataset.status = session.status;
    row.classList.toggle('in-progress', Boolean(session.in_progress));

    const started = document.createElement('th');
    started.scope = 'row';
    started.append(timeElement(session.started_at));
    row.append(started);

    cell(row, callerOf(session));
    cell(row, GREETING_LABELS[session.greeting_source] || session.greeting_source || muted('—'));

    const badge = document.createElement('span');
    badge.className = `badge ${session.status}`;
    badge.textContent = STATUS_LABELS[session.status] || session.status;
    cell(row, badge);

    cell(row, session.intent || muted('—'));
    if (typeof session.duration_seconds === 'number') {
      cell(row, formatDuration(session.duration_seconds), 'num');
    } else {
      cell(row, muted(session.in_progress ? 'ongoing' : '—'), 'num');
    }

    const last = document.createElement('span');
    last.textContent = `${EVENT_LABELS[session.last_event] || session.last_event} `;
    const lastAt = timeElement(session.last_event_at);
    lastAt.className = 'muted';
    last.append(lastAt);
    cell(row, last);
  }

  // Inserts or updates one session's row; an older change than the one shown is ignored.
  function upsert(session) {
    if (!session || typeof session.call_sid !== 'string') return;
    const tbody = $('calls');
    const known = rows.get(session.call_sid);
    let row;
    if (known) {
      if (cursorOf(session) < cursorOf(known.session)) return;
      row = known.row;
      row.remove();
    } else {
      row = document.createElement('tr');
    }
    fillRow(row, session);
    rows.set(session.call_sid, { session, row });
    let before = null;
    for (const other of tbody.rows) {
      const entry = rows.get(other.dataset.callSid);
      if (entry && sortsBefore(session, entry.session)) {
        before = other;
        break;
      }
    }
    tbody.insertBefore(row, before);
    updateCount();
  }

  function clearRows() {
    rows.clear();
    $('calls').replaceChildren();
    updateCount();
  }

  function updateCount() {
    const n = rows.size;
    let live = 0;
    for (const { session } of rows.values()) if (session.in_progress) live += 1;
    $('count').textContent = n === 0 ? '' : `${n} call${n === 1 ? '' : 's'}, ${live} in progress`;
    $('empty').hidden = n !== 0;
  }

  // ---- status line ---------------------------------------------------------------------------

  function setLive(state) {
    const labels = { connected: 'Live', polling: 'Live (polling)', offline: 'Offline' };
    $('live').dataset.live = state;
    $('live-text').textContent = labels[state];
  }

  function showMessage(text) {
    const el = $('message');
    el.textContent = text || '';
    el.hidden = !text;
  }

  // ---- the feed ----------------------------------------------------------------------------

  // Why a request failed, for the retry logic: `auth` stops everything, the rest retry.
  class FeedError extends Error {
    constructor(message, kind) {
      super(message);
      this.kind = kind;
    }
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener('abort', () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }

  function withJitter(ms) {
    return ms / 2 + Math.random() * (ms / 2);
  }

  // One viewing of one organization in one time range: the list, then the live feed. A
  // range change or sign-out aborts it and starts another, so nothing from the old one is
  // drawn after.
  class Viewer {
    constructor(auth, range) {
      this.auth = auth;
      this.range = range;
      this.controller = new AbortController();
      this.signal = this.controller.signal;
      this.cursor = null;
      this.sinceMs = 0;
    }

    stop() {
      this.controller.abort();
    }

    async request(path) {
      const response = await fetch(`/api/orgs/${this.auth.org}${path}`, {
        headers: { Authorization: `Bearer ${this.auth.key}`, Accept: 'application/json' },
        cache: 'no-store',
        signal: this.signal,
      });
      if (response.status === 401 || response.status === 403) {
        throw new FeedError('The key was refused.', 'auth');
      }
      if (response.status === 404) {
        throw new FeedError('This key does not open that organization.', 'auth');
      }
      if (!response.ok) {
        throw new FeedError(`The service answered ${response.status}.`, 'retry');
      }
      return response;
    }

    async run() {
      try {
        await this.list();
        await this.follow();
      } catch (err) {
        if (this.signal.aborted) return;
        if (err instanceof FeedError && err.kind === 'auth') {
          setLive('offline');
          signOut(err.message);
          return;
        }
        throw err;
      }
    }

    // The calls in range, retried with backoff until it works (or the viewer is stopped).
    async list() {
      let delay = BACKOFF_FIRST_MS;
      for (;;) {
        try {
          const since = encodeURIComponent(this.range);
          const response = await this.request(`/calls?since=${since}`);
          const page = await response.json();
          if (this.signal.aborted) return;
          clearRows();
          this.sinceMs = Date.parse(page.since) || 0;
          for (const session of page.calls || []) upsert(session);
          this.cursor = page.cursor;
          showMessage('');
          return;
        } catch (err) {
          if (this.signal.aborted || (err instanceof FeedError && err.kind === 'auth')) throw err;
          setLive('offline');
          showMessage(`Cannot load the calls (${err.message}); retrying.`);
          await sleep(withJitter(delay), this.signal);
          delay = Math.min(delay * 2, BACKOFF_MAX_MS);
        }
      }
    }

    // A change from the feed: drawn if its call is shown or started within the range.
    apply(session, cursor) {
      if (session && (rows.has(session.call_sid) || startedMs(session) >= this.sinceMs)) {
        upsert(session);
      }
      if (cursor !== undefined && cursor !== null && cursor !== '') this.cursor = cursor;
    }

    // Streams while streaming works, polls while it does not; runs until stopped.
    async follow() {
      let failures = 0;
      let delay = BACKOFF_FIRST_MS;
      while (!this.signal.aborted) {
        let received = false;
        try {
          received = await this.stream();
        } catch (err) {
          if (this.signal.aborted || (err instanceof FeedError && err.kind === 'auth')) throw err;
          received = err.received === true;
        }
        if (this.signal.aborted) return;
        setLive('offline');
        if (received) {
          failures = 0;
          delay = BACKOFF_FIRST_MS;
        } else {
          failures += 1;
        }
        if (failures >= STREAM_FAILURES_BEFORE_POLLING) {
          await this.poll();
          failures = 0;
          delay = BACKOFF_FIRST_MS;
          continue;
        }
        await sleep(withJitter(delay), this.signal);
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      }
    }

    // Reads the Server-Sent Events feed from the cursor until it ends or fails. Returns
    // whether it connected and got anything, so a stream that works then drops is not
    // counted as one that cannot work.
    async stream() {
      const since = encodeURIComponent(this.cursor ?? '');
      const response = await this.request(`/calls/live?since=${since}`);
      if (!response.body || !(response.headers.get('content-type') || '').startsWith('text/event-stream')) {
        throw new FeedError('not an event stream', 'retry');
      }
      setLive('connected');
      showMessage('');
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new EventParser((event) => {
        if (event.type !== 'session') return;
        let session;
        try {
          session = JSON.parse(event.data);
        } catch (_) {
          return;
        }
        this.apply(session, event.id || session.cursor);
      });
      let received = false;
      let idle;
      const resetIdle = () => {
        clearTimeout(idle);
        idle = setTimeout(() => reader.cancel(), STREAM_IDLE_MS);
      };
      const onAbort = () => reader.cancel();
      this.signal.addEventListener('abort', onAbort, { once: true });
      try {
        resetIdle();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          received = true;
          resetIdle();
          parser.push(value);
        }
      } catch (err) {
        err.received = received;
        throw err;
      } finally {
        clearTimeout(idle);
        this.signal.removeEventListener('abort', onAbort);
      }
      return received;
    }

    // Polls the feed every POLL_EVERY_MS, then returns so the stream is tried again.
    async poll() {
      let delay = POLL_EVERY_MS;
      for (let i = 0; i < POLLS_BEFORE_STREAM_RETRY && !this.signal.aborted; i += 1) {
        try {
          const since = encodeURIComponent(this.cursor ?? '');
          const response = await this.request(`/calls/live?mode=poll&since=${since}`);
          const page = await response.json();
          if (this.signal.aborted) return;
          for (const session of page.changes || []) this.apply(session, session.cursor);
          if (page.cursor !== undefined) this.cursor = page.cursor;
          setLive('polling');
          showMessage('');
          delay = POLL_EVERY_MS;
        } catch (err) {
          if (this.signal.aborted || (err instanceof FeedError && err.kind === 'auth')) throw err;
          setLive('offline');
          showMessage(`Lost the live feed (${err.message}); retrying.`);
          delay = Math.min(delay * 2, BACKOFF_MAX_MS);
        }
        await sleep(withJitter(delay), this.signal);
      }
    }
  }

  // Server-Sent Events, parsed as the HTML standard says: lines end with CR, LF or CRLF;
  // a blank line dispatches; `:` starts a comment; `data` lines join with a newline.
  class EventParser {
    constructor(onEvent) {
      this.onEvent = onEvent;
      this.buffer = '';
      this.reset();
    }

    reset() {
      this.type = '';
      this.data = [];
      this.id = null;
    }

    push(text) {
      this.buffer += text;
      // A CR at the very end may be the first half of a CRLF: keep it for the next chunk.
      const lines = this.buffer.split(/\r\n|\r(?!$)|\n/);
      this.buffer = lines.pop();
      for (const line of lines) this.line(line);
    }

    line(line) {
      if (line === '') {
        if (this.data.length > 0) {
          this.onEvent({ type: this.type || 'message', data: this.data.join('\n'), id: this.id });
        }
        this.reset();
        return;
      }
      if (line.startsWith(':')) return;
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') this.type = value;
      else if (field === 'data') this.data.push(value);
      else if (field === 'id' && !value.includes('\0')) this.id = value;
    }
  }

  // ---- wiring ------------------------------------------------------------------------------

  let viewer = null;

  function start(auth) {
    if (viewer) viewer.stop();
    $('auth').hidden = true;
    $('log').hidden = false;
    $('org-label').textContent = `· organization ${auth.org}`;
    viewer = new Viewer(auth, $('range').value);
    viewer.run().catch((err) => {
      setLive('offline');
      showMessage(`The call log stopped: ${err.message}`);
    });
  }

  function signOut(reason) {
    if (viewer) viewer.stop();
    viewer = null;
    forgetAuth();
    clearRows();
    setLive('offline');
    $('org-label').textContent = '';
    $('log').hidden = true;
    $('auth').hidden = false;
    const error = $('auth-error');
    error.textContent = reason || '';
    error.hidden = !reason;
    $('auth-org').focus();
  }

  function init() {
    const range = $('range');
    const savedRange = sessionStorage.getItem(RANGE_KEY);
    if (savedRange && [...range.options].some((o) => o.value === savedRange)) {
      range.value = savedRange;
    }
    range.addEventListener('change', () => {
      sessionStorage.setItem(RANGE_KEY, range.value);
      const auth = readAuth();
      if (auth) start(auth);
    });
    $('sign-out').addEventListener('click', () => signOut(''));
    $('auth').addEventListener('submit', (e) => {
      e.preventDefault();
      const org = $('auth-org').value.trim();
      const key = $('auth-key').value.trim();
      if (!/^[0-9]+$/.test(org) || key === '') return;
      $('auth-key').value = '';
      saveAuth({ org, key });
      start({ org, key });
    });
    // A fragment pasted into an open page signs in with it.
    window.addEventListener('hashchange', () => {
      const fresh = readAuth();
      if (fresh) start(fresh);
    });
    const auth = readAuth();
    if (auth) start(auth);
    else signOut('');
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', init);
  } else {
    init();
  }
})();
