// The approver console's only script. It builds what the approver signs
// from the request the page shows (the content text, its digest and the
// review statement of docs/signing.md), has the passkey sign the
// statement's SHA-256 with navigator.credentials.get, and posts the
// assertion; it creates passkeys with navigator.credentials.create; and it
// refreshes lists when the server's event stream says something changed.
'use strict';

(function () {
  const body = document.body;
  const csrf = body.dataset.csrf;
  const rpId = body.dataset.rpId;
  // The broker's clock when the page was made, and ours then: statements
  // are dated by the broker's clock, which must be within five minutes.
  const serverNow = Date.parse(body.dataset.now);
  const loadedAt = Date.now();
  const enc = new TextEncoder();

  function b64(bytes) {
    let s = '';
    for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
    return btoa(s);
  }
  function b64url(bytes) {
    return b64(bytes).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  function fromB64url(s) {
    s = s.replace(/-/g, '+').replace(/_/g, '/');
    while (s.length % 4) s += '=';
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }
  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  }
  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }
  async function digest(text) {
    return 'sha256:' + hex(await sha256(enc.encode(text)));
  }

  // The content text of docs/signing.md, versions 1 and 2, from the
  // request's fields as the page shows them.
  function contentText(d) {
    const secs = Number(d.createdSeconds);
    const nanos = String(Number(d.createdNanos)).padStart(9, '0');
    const whole = new Date(secs * 1000).toISOString().slice(0, 19);
    let created;
    if (d.version === '1') {
      const frac = nanos.replace(/0+$/, '');
      created = whole + (frac ? '.' + frac : '') + 'Z';
    } else {
      created = whole + '.' + nanos + 'Z';
    }
    return 'breakglass request content v' + d.version + '\n' +
      'id ' + d.id + '\n' +
      'account ' + d.account + '\n' +
      'requester ' + d.requester + '\n' +
      'ttl_seconds ' + d.ttl + '\n' +
      'drill ' + d.drill + '\n' +
      'created_at ' + created + '\n' +
      'ticket ' + b64(enc.encode(d.ticket)) + '\n' +
      'justification ' + b64(enc.encode(d.justification)) + '\n';
  }

  function brokerTime() {
    const t = new Date(serverNow + (Date.now() - loadedAt));
    return t.toISOString().replace(/\.\d{3}Z$/, 'Z');
  }

  async function post(url, payload) {
    const res = await fetch(url, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'Accept': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify(payload),
    });
    const out = await res.json().catch(() => ({ error: res.status + ' ' + res.statusText }));
    if (!res.ok) throw new Error(out.error || res.statusText);
    return out;
  }

  // sign has one of the bound passkeys (credential IDs, space-separated)
  // sign a statement: its SHA-256 is the WebAuthn challenge, with user
  // verification required. It returns the assertion as JSON.
  async function sign(stmt, credentials) {
    const allow = credentials.split(' ').filter(Boolean).map((id) => ({ type: 'public-key', id: fromB64url(id) }));
    const cred = await navigator.credentials.get({
      publicKey: { challenge: await sha256(stmt), rpId: rpId, allowCredentials: allow, userVerification: 'required', timeout: 120000 },
    });
    const r = cred.response;
    return {
      id: cred.id, rawId: b64url(cred.rawId), type: cred.type,
      response: {
        authenticatorData: b64url(r.authenticatorData), clientDataJSON: b64url(r.clientDataJSON), signature: b64url(r.signature),
        userHandle: r.userHandle ? b64url(r.userHandle) : undefined,
      },
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
    };
  }

  // ---- reviews ----

  async function review(decision) {
    const result = document.getElementById('review-result');
    const shown = document.getElementById('statement');
    result.textContent = '';
    result.className = '';
    const d = document.getElementById('content').dataset;
    try {
      const text = contentText(d);
      const computed = await digest(text);
      if (computed !== d.digest) {
        throw new Error('the request shown does not match its content digest (' + d.digest + ', computed ' + computed + '): nothing was signed');
      }
      const comment = document.getElementById('comment').value;
      const statement = 'breakglass review statement v1\n' +
        'type ' + decision + '\n' +
        'origin ' + d.logOrigin + '\n' +
        'request ' + d.id + '\n' +
        'content ' + computed + '\n' +
        'comment ' + (await digest(comment)) + '\n' +
        'time ' + brokerTime() + '\n';
      shown.textContent = statement;
      shown.hidden = false;
      const stmt = enc.encode(statement);
      const assertion = await sign(stmt, d.credentials);
      const out = await post(location.pathname + '/review', { decision: decision, comment: comment, statement: b64(stmt), assertion: assertion });
      result.textContent = decision + ' recorded (audit entry ' + out.entry + '); the request is ' + out.state;
      result.className = 'ok';
      const form = document.getElementById('review-form');
      form.querySelectorAll('button, textarea').forEach((el) => { el.disabled = true; });
      refresh();
    } catch (e) {
      result.textContent = 'Not recorded: ' + e.message;
      result.className = 'error';
    }
  }

  for (const id of ['approve', 'deny']) {
    const button = document.getElementById(id);
    if (button) button.addEventListener('click', () => review(button.dataset.decision));
  }

  // ---- requests ----

  // A request made here is signed by the requester's passkey: the script
  // builds the request statement of docs/signing.md from the form, with a
  // fresh id, and the passkey signs its SHA-256.
  async function createRequest(ev) {
    ev.preventDefault();
    const form = ev.target;
    const result = document.getElementById('create-result');
    result.textContent = '';
    result.className = '';
    try {
      const account = form.account.value;
      const justification = form.justification.value;
      const ticket = form.ticket.value;
      const minutes = form.ttl.value === '' ? 0 : Number(form.ttl.value);
      if (!Number.isInteger(minutes) || minutes < 0) throw new Error('the TTL is a whole number of minutes');
      const ttl = minutes * 60;
      const drill = form.drill.checked;
      const id = crypto.randomUUID();
      const statement = 'breakglass request statement v1\n' +
        'origin ' + body.dataset.logOrigin + '\n' +
        'request ' + id + '\n' +
        'account ' + account + '\n' +
        'ttl_seconds ' + ttl + '\n' +
        'drill ' + drill + '\n' +
        'solo false\n' +
        'ticket ' + b64(enc.encode(ticket)) + '\n' +
        'justification ' + b64(enc.encode(justification)) + '\n' +
        'time ' + brokerTime() + '\n';
      const stmt = enc.encode(statement);
      const assertion = await sign(stmt, form.dataset.credentials);
      const out = await post('/requests', { account: account, justification: justification, ticket: ticket, ttl_seconds: ttl, drill: drill,
        statement: b64(stmt), assertion: assertion });
      location.assign('/requests/' + out.id);
    } catch (e) {
      result.textContent = 'Not requested: ' + e.message;
      result.className = 'error';
    }
  }

  const createForm = document.getElementById('create-form');
  if (createForm) createForm.addEventListener('submit', createRequest);

  // ---- passkeys ----

  async function createPasskey() {
    const err = document.getElementById('passkey-error');
    const done = document.getElementById('passkey-result');
    err.hidden = true;
    try {
      const opts = await post('/passkeys/begin', { label: document.getElementById('passkey-label').value });
      const pk = opts.publicKey;
      pk.challenge = fromB64url(pk.challenge);
      pk.user.id = fromB64url(pk.user.id);
      for (const c of pk.excludeCredentials || []) c.id = fromB64url(c.id);
      const cred = await navigator.credentials.create({ publicKey: pk });
      const r = cred.response;
      const out = await post('/passkeys/finish', {
        id: cred.id, rawId: b64url(cred.rawId), type: cred.type,
        response: {
          attestationObject: b64url(r.attestationObject), clientDataJSON: b64url(r.clientDataJSON),
          transports: r.getTransports ? r.getTransports() : [],
        },
        clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
        authenticatorAttachment: cred.authenticatorAttachment || undefined,
      });
      document.getElementById('passkey-command').textContent = out.command;
      document.getElementById('passkey-fingerprint').textContent = out.algorithm + ' ' + out.fingerprint;
      done.hidden = false;
    } catch (e) {
      err.textContent = 'No passkey was created: ' + e.message;
      err.hidden = false;
    }
  }

  const create = document.getElementById('create-passkey');
  if (create) create.addEventListener('click', createPasskey);

  // ---- live updates ----

  const live = document.querySelector('[data-fragment]');
  async function refresh() {
    if (!live) return;
    const res = await fetch(live.dataset.fragment, { credentials: 'same-origin' });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), 'text/html');
    live.replaceChildren(...doc.body.childNodes);
  }
  if (live && window.EventSource) {
    const status = document.getElementById('live');
    const events = new EventSource('/events');
    events.addEventListener('ready', () => { status.textContent = 'live'; });
    events.addEventListener('change', () => { refresh(); });
    events.addEventListener('unauthenticated', () => {
      status.textContent = 'Your client certificate is no longer valid: updates stopped.';
      events.close();
    });
    events.onerror = () => { status.textContent = 'reconnecting…'; };
  }
}());
