// The whole break-glass flow from Node.js, against a running broker, as
// each of the dev identities in turn:
//
//   alice  creates a request and checks its content digest;
//   bob    is refused three wrongly signed approvals (nothing recorded),
//          then approves with a statement he built and signed himself;
//   erin   approves: the quorum is met;
//   alice  issues a token, which jose verifies against the JWKS that the
//          issuer's OpenID discovery names, over HTTPS;
//   carol  closes the grant's post-use review and attests the account,
//          both with signed statements;
//   dave   (auditor) checks every entry's signature and chain, every
//          signed statement in the log, and the checkpoint.
//
// Everything it signs is built from docs/signing.md by lib/signing.mjs
// (checked against testdata/vectors by npm test); nothing the broker sends
// is signed. Progress goes to stderr; a JSON summary to stdout.
//
// Configuration (environment):
//   BG_ADDR         the broker's gRPC address (127.0.0.1:7443)
//   BG_DEV_DIR      a dev broker's directory (../../.breakglass-dev), which
//                   gives the defaults of the next two
//   BG_CA           the CA certificate of the broker and its clients
//   BG_IDENTITIES   a directory of NAME.crt and NAME.key for alice, bob,
//                   erin, carol and dave
//   BG_AUDIT_KEY, BG_CHECKPOINT_KEY   the audit key (PEM) and the
//                   checkpoint verifier key (a file holding the note
//                   verifier key) the auditor pinned; without them the
//                   auditor takes GetLogInfo's, which proves only that the
//                   log is consistent with the keys the broker names now.
import { readFileSync } from 'node:fs';
import { createPrivateKey, createPublicKey, randomUUID, sign as cryptoSign, X509Certificate } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import https from 'node:https';
import path from 'node:path';
import * as jose from 'jose';
import * as s from './lib/signing.mjs';
import * as pk from './lib/passkey.mjs';
import { connect, BrokerError } from './lib/broker.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const env = process.env;
const devDir = env.BG_DEV_DIR ?? path.resolve(here, '../../.breakglass-dev');
const addr = env.BG_ADDR ?? '127.0.0.1:7443';
const caFile = env.BG_CA ?? path.join(devDir, 'ca/ca.crt');
const ids = env.BG_IDENTITIES ?? path.join(devDir, 'identities');
const ACCOUNT = 'prod-db';
const AUDIENCE = 'db.prod.example';

const log = (...a) => console.error('flow:', ...a);

// identity is one principal: a connection with its client certificate,
// its private key (which signs its statements) and its certificate.
function identity(name) {
  const cert = path.join(ids, `${name}.crt`);
  const key = path.join(ids, `${name}.key`);
  return {
    name,
    api: connect({ addr, ca: caFile, cert, key }),
    key: createPrivateKey(readFileSync(key)),
    cert: new X509Certificate(readFileSync(cert)),
  };
}

// firstDifference names the first line where two texts differ.
function firstDifference(ours, theirs) {
  const a = ours.toString('utf8').split('\n');
  const b = theirs.toString('utf8').split('\n');
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i] !== b[i]) return `line ${i + 1}: ours ${JSON.stringify(a[i])}, the broker's ${JSON.stringify(b[i])}`;
  }
  return null;
}

// content builds the content text of a request from the fields the person
// is shown and refuses to go on when its digest is not the one the broker
// logged: signing would then approve something else than what was shown.
function content(req) {
  const text = s.contentText(s.contentOfRequest(req));
  const d = s.digest(text);
  if (d !== req.content_digest) {
    throw new Error(`request ${req.id}: our content digest ${d} is not the broker's ${req.content_digest} (content_version ${req.content_version}); not signing`);
  }
  return { text, digest: d };
}

// signed builds and signs a statement with p's key, after checking that
// it verifies with p's own certificate (a wrong key type or encoding shows
// here, not at the broker).
function signed(p, fields) {
  const text = s.statementText(fields);
  const signature = s.signStatement(p.key, text);
  s.verifyStatement(p.cert.publicKey, text, signature, fields, Math.floor(Date.now() / 1000));
  return { text, signature };
}

// requestStatement signs, with p's key, the request statement of a
// CreateRequestRequest (docs/signing.md, "Request statements"): the request
// under a fresh id of p's choosing, which becomes the request's id.
function requestStatement(p, origin, req) {
  const text = s.requestStatementText({
    origin, request: randomUUID(), account: req.account, ttlSeconds: req.requested_ttl ? Number(req.requested_ttl.seconds) : 0,
    drill: Boolean(req.drill), solo: Boolean(req.solo), ticket: req.ticket ?? '', justification: req.justification, time: new Date(),
  });
  return { statement: text, signature: s.signStatement(p.key, text), signer: 'REVIEW_SIGNER_CERTIFICATE' };
}

// refused expects a call to fail with InvalidArgument and returns its
// message.
async function refused(what, call) {
  try {
    await call();
  } catch (e) {
    if (e instanceof BrokerError && e.code === 'INVALID_ARGUMENT') {
      log(`refused as it should be: ${what}: ${e.details}`);
      return e.details;
    }
    throw e;
  }
  throw new Error(`the broker accepted ${what}`);
}

// review is one approver's decision, the way a client must make it.
async function review(p, origin, id, comment) {
  const { request: req } = await p.api.RequestService.GetRequest({ id });
  const c = content(req);
  const decision = 'REVIEW_DECISION_APPROVE';
  const fields = { type: 'approve', origin, request: req.id, content: c.digest, comment, time: new Date() };
  const st = signed(p, fields);
  // PrepareReview finds our own mistakes: compare, never sign its text.
  const prep = await p.api.ReviewService.PrepareReview({ id, decision, comment });
  const diff = firstDifference(c.text, prep.content) ??
    firstDifference(st.text.toString().replace(/\ntime .*\n$/, '\n'), prep.statement.toString().replace(/\ntime .*\n$/, '\n'));
  if (diff || prep.origin !== origin || prep.content_digest !== c.digest || prep.content_version !== req.content_version) {
    throw new Error(`${p.name}: our review of ${id} differs from PrepareReview's: ${diff ?? 'origin, digest or version'}`);
  }
  const res = await p.api.ReviewService.ReviewRequest({ id, decision, comment, statement: st.text, signature: st.signature, idempotency_key: randomUUID() });
  log(`${p.name} approved ${id} (audit entry ${res.entry.index}); the request is ${res.request.state}`);
  return res;
}

// getJSON fetches a JSON document over HTTPS, trusting only the CA.
function getJSON(url) {
  return new Promise((resolve, reject) => {
    https.get(url, { ca: readFileSync(caFile) }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`${url}: HTTP ${res.statusCode}: ${body}`));
        try { resolve(JSON.parse(body)); } catch (e) { reject(new Error(`${url}: ${e.message}`)); }
      });
    }).on('error', reject);
  });
}

// principalOf names a certificate's holder by the identity rule the
// policy_loaded entry logged.
function principalOf(cert, rule) {
  if (cert.ca) throw new Error('a CA certificate names no principal');
  if (rule.mode === 'cn') return /(?:^|\n)CN=([^\n]+)/.exec(cert.subject)?.[1];
  const uris = (cert.subjectAltName ?? '').split(', ').filter((n) => n.startsWith('URI:')).map((n) => n.slice(4)).filter((u) => u.startsWith(rule.uri_prefix));
  if (uris.length !== 1) throw new Error(`the certificate has ${uris.length} URI SANs under ${rule.uri_prefix}`);
  return uris[0].slice(rule.uri_prefix.length);
}

// audit reads the whole log as the auditor and checks what a client can:
// entry signatures and the chain, the key rotations, every request's
// content digest, every signed statement against its entry, and the
// checkpoint over all of it.
async function audit(dave) {
  const info = await dave.api.AuditService.GetLogInfo({});
  const pinned = Boolean(env.BG_AUDIT_KEY && env.BG_CHECKPOINT_KEY);
  let auditKey = createPublicKey(pinned ? readFileSync(env.BG_AUDIT_KEY) : info.audit_key.pem);
  const vkey = pinned ? readFileSync(env.BG_CHECKPOINT_KEY, 'utf8').trim() : info.checkpoint_key.note_verifier_key;
  if (!pinned) log('auditor: no BG_AUDIT_KEY and BG_CHECKPOINT_KEY pinned; using the keys GetLogInfo names');
  const clientCA = new X509Certificate(readFileSync(caFile));
  // The entries, page by page, up to the latest checkpoint's size.
  const cp = await dave.api.AuditService.GetCheckpoint({});
  const size = Number(cp.size);
  const entries = [];
  while (entries.length < size) {
    const page = await dave.api.AuditService.ListEntries({ start: String(entries.length), end: String(size) });
    if (page.entries.length === 0) throw new Error(`ListEntries returned nothing at ${entries.length} of ${size}`);
    entries.push(...page.entries);
  }
  let prev = s.ZERO_PREV;
  let kid = await s.thumbprint(auditKey);
  let rule = null;
  const digests = {};
  const passkeys = new Map();
  const removed = new Set();
  const counts = { entries: 0, statements: 0, requests: 0, rotations: 0 };
  const leaves = [];
  for (const [i, raw] of entries.entries()) {
    if (Number(raw.index) !== i) throw new Error(`entry ${raw.index} is at position ${i}`);
    if (raw.key_id !== kid) throw new Error(`entry ${i} is signed by key ${raw.key_id}, not the audit key in force ${kid}`);
    const e = s.verifyEntry(raw.entry, raw.signature, auditKey, prev);
    const leaf = s.leafHash(raw.entry);
    if (!leaf.equals(raw.leaf_hash)) throw new Error(`entry ${i}: the leaf hash the broker sent is not the entry's`);
    leaves.push(leaf);
    prev = leaf.toString('hex');
    counts.entries++;
    const p = e.payload ?? {};
    const at = s.parseRFC3339(e.time).seconds;
    // signer checks the certificate an entry carries: from the client CA,
    // naming the entry's actor.
    const signer = () => {
      const cert = new X509Certificate(Buffer.from(p.certificate, 'base64'));
      if (!cert.verify(clientCA.publicKey) || !cert.checkIssued(clientCA)) throw new Error(`entry ${i}: the signer's certificate is not from the client CA`);
      const who = principalOf(cert, rule);
      if (who !== e.actor) throw new Error(`entry ${i}: signed by ${who}, logged as ${e.actor}`);
      return cert;
    };
    // statementOf checks a signed statement carried by an entry: signed
    // by the certificate key, or by a bound passkey (a WebAuthn assertion
    // whose challenge is the statement's SHA-256).
    const statementOf = (expect) => {
      const stmt = Buffer.from(p.statement, 'base64');
      if (p.passkey) {
        const id = Buffer.from(p.passkey.credential, 'base64');
        const bound = passkeys.get(id.toString('base64url'));
        if (!bound || bound.actor !== e.actor) throw new Error(`entry ${i}: passkey ${id.toString('base64url')} is not bound to ${e.actor}`);
        bound.counter = pk.verifyAssertion(bound.binding, stmt, {
          credential: id, authenticatorData: Buffer.from(p.passkey.authenticator_data, 'base64'),
          clientDataJSON: Buffer.from(p.passkey.client_data_json, 'base64'), signature: Buffer.from(p.passkey.signature, 'base64'),
        }, bound.counter);
        s.checkStatement(s.parseStatement(stmt), expect, at);
      } else {
        s.verifyStatement(signer().publicKey, stmt, Buffer.from(p.signature, 'base64'), expect, at);
      }
      counts.statements++;
    };
    switch (e.type) {
      case 'policy_loaded':
        rule = p.identity;
        break;
      case 'request_created': {
        const d = s.digest(s.contentText(s.contentOfEntry(e)));
        if (d !== p.content_digest) throw new Error(`entry ${i}: content_digest ${p.content_digest} is not the content's ${d}`);
        digests[e.request] = d;
        counts.requests++;
        // Signed by the requester (a ttl_seconds of 0 asks for the
        // account's longest, which the entry records resolved).
        s.verifyRequestStatement(signer().publicKey, Buffer.from(p.statement, 'base64'), Buffer.from(p.signature, 'base64'), {
          origin: info.origin, request: e.request, account: e.account, ttlSeconds: p.ttl_seconds, defaultTTLSeconds: p.ttl_seconds,
          drill: Boolean(p.drill), solo: Boolean(p.solo), ticket: p.ticket ?? '', justification: p.justification ?? '',
        }, at);
        counts.statements++;
        break;
      }
      case 'request_reviewed':
        statementOf({ type: p.decision, origin: info.origin, request: e.request, content: digests[e.request], comment: p.comment ?? '' });
        break;
      case 'post_review_closed':
        statementOf({ type: 'review-close', origin: info.origin, request: e.request, content: digests[e.request], comment: p.notes ?? '' });
        break;
      case 'account_attested':
        statementOf({ type: 'attest', origin: info.origin, request: p.id, content: s.digest(s.accountText(e.account, p.policy_hash)), comment: p.notes ?? '' });
        break;
      case 'passkey_bound': {
        const cert = signer();
        const binding = pk.verifyBinding(cert.publicKey, e.actor, Buffer.from(p.statement, 'base64'), Buffer.from(p.signature, 'base64'), info.origin, at);
        const id = binding.credential.toString('base64url');
        if (passkeys.has(id) || removed.has(id)) throw new Error(`entry ${i}: passkey ${id} was bound before`);
        passkeys.set(id, { binding, actor: e.actor, counter: 0 });
        counts.statements++;
        break;
      }
      case 'passkey_removed': {
        const id = Buffer.from(p.credential, 'base64').toString('base64url');
        passkeys.delete(id);
        removed.add(id);
        break;
      }
      case 'key_activated':
        // An audit key rotation, signed by the old key and the new one:
        // the new key signs the entries after this one.
        if (p.purpose === 'audit' && p.previous) {
          const r = await s.verifyRotation(Buffer.from(p.rotation, 'base64'), auditKey, Buffer.from(p.old_signature, 'base64'), Buffer.from(p.new_signature, 'base64'));
          if (r.new !== p.kid || !r.publicKey.equals(createPublicKey(p.public_pem))) throw new Error(`entry ${i}: the rotation does not describe this key`);
          auditKey = r.publicKey;
          kid = r.new;
          counts.rotations++;
        }
        break;
      default:
    }
  }
  const opened = s.verifyCheckpoint(cp.checkpoint, vkey, info.origin);
  s.checkTree(opened, leaves);
  log(`auditor: ${counts.entries} entries signed and chained, ${counts.requests} content digests and ${counts.statements} signed statements checked, checkpoint of size ${size} verified`);
  return { ...counts, checkpoint_size: size, root: opened.root.toString('base64'), pinned };
}

async function main() {
  const [alice, bob, erin, carol, dave] = ['alice', 'bob', 'erin', 'carol', 'dave'].map(identity);
  const all = [alice, bob, erin, carol, dave];
  try {
    const { origin } = await alice.api.AuditService.GetLogInfo({});
    log(`broker at ${addr}, log origin ${origin}`);

    // alice asks. The justification has a newline and non-ASCII text:
    // the content text carries the base64 of its UTF-8 bytes.
    const justification = 'primary is down, INC-4711\nreplica lag 40 s — primärer Knoten ✓';
    const ask = { account: ACCOUNT, justification, ticket: 'INC-4711', requested_ttl: { seconds: '1800', nanos: 0 }, idempotency_key: randomUUID() };
    // The request is signed by alice: its statement names the id she
    // chose, which the broker gives the request.
    const requestSt = requestStatement(alice, origin, ask);
    const created = await alice.api.RequestService.CreateRequest({ ...ask, request_statement: requestSt });
    const id = created.request.id;
    if (id !== s.parseRequestStatement(requestSt.statement).request) throw new Error(`the broker named the request ${id}, not the id alice signed`);
    const c = content(created.request);
    log(`alice created ${id}: content v${created.request.content_version}, digest ${c.digest} matches`);

    // Three approvals the broker must refuse, recording nothing.
    const comment = 'confirmed on the incident bridge';
    const fields = { type: 'approve', origin, request: id, content: c.digest, comment, time: new Date() };
    const text = s.statementText(fields);
    const rawRS = cryptoSign('sha256', text, { key: bob.key, dsaEncoding: 'ieee-p1363' });
    const v1 = s.digest(s.contentText({ ...s.contentOfRequest(created.request), version: 1 }));
    const refusals = {
      raw_r_s: await refused('a raw r||s signature', () => bob.api.ReviewService.ReviewRequest({
        id, decision: 'REVIEW_DECISION_APPROVE', comment, statement: text, signature: rawRS })),
      content_v1: await refused('a statement over the version 1 content', () => {
        const st = signed(bob, { ...fields, content: v1 });
        return bob.api.ReviewService.ReviewRequest({ id, decision: 'REVIEW_DECISION_APPROVE', comment, statement: st.text, signature: st.signature });
      }),
      other_comment: await refused('a statement over another comment', () => {
        const st = signed(bob, { ...fields, comment: 'approved' });
        return bob.api.ReviewService.ReviewRequest({ id, decision: 'REVIEW_DECISION_APPROVE', comment, statement: st.text, signature: st.signature });
      }),
    };
    const { request: untouched } = await bob.api.RequestService.GetRequest({ id });
    if (untouched.reviews.length !== 0 || untouched.state !== 'REQUEST_STATE_PENDING') throw new Error('a refused review left a trace');

    await review(bob, origin, id, comment);
    const approved = await review(erin, origin, id, '');
    if (approved.request.state !== 'REQUEST_STATE_APPROVED') throw new Error(`the request is ${approved.request.state} after the quorum`);

    // alice's token, verified as a relying party would: the issuer's
    // discovery document names the JWKS, jose checks the rest.
    const tok = await alice.api.TokenService.IssueToken({ request_id: id, audience: AUDIENCE });
    const { issuer } = await alice.api.TokenService.GetSigningKeys({});
    const discovery = await getJSON(`${issuer}/.well-known/openid-configuration`);
    if (discovery.issuer !== issuer) throw new Error(`discovery names issuer ${discovery.issuer}, not ${issuer}`);
    const jwks = jose.createLocalJWKSet(await getJSON(discovery.jwks_uri));
    const { payload, protectedHeader } = await jose.jwtVerify(tok.token, jwks, { issuer, audience: AUDIENCE, typ: 'at+jwt', algorithms: ['ES256'] });
    log(`alice's token ${payload.jti} verified by jose: sub ${payload.sub}, kid ${protectedHeader.kid}`);

    // carol, the account's owner and its reviewer (she neither asked nor
    // approved), closes the grant's post-use review and attests the
    // account.
    const { reviews } = await carol.api.GovernanceService.ListPostReviews({});
    const pr = reviews.find((r) => r.request_id === id);
    if (!pr) throw new Error(`no post-use review of ${id} for carol`);
    const { request: used } = await carol.api.RequestService.GetRequest({ id });
    const notes = 'used as described; the replica was rebuilt';
    const close = signed(carol, { type: 'review-close', origin, request: used.id, content: content(used).digest, comment: notes, time: new Date() });
    const closed = await carol.api.GovernanceService.ClosePostReview({ id: pr.id, notes, statement: close.text, signature: close.signature });
    log(`carol closed post-use review ${pr.id} (audit entry ${closed.entry.index})`);
    const { policy_hash: policyHash } = await carol.api.AccountService.ListAccounts({});
    const attestationID = randomUUID();
    const attestNotes = 'still needed; approvers reviewed';
    const att = signed(carol, { type: 'attest', origin, request: attestationID, content: s.digest(s.accountText(ACCOUNT, policyHash)), comment: attestNotes, time: new Date() });
    const attested = await carol.api.AccountService.AttestAccount({ account: ACCOUNT, notes: attestNotes, statement: att.text, signature: att.signature });
    if (attested.attestation_id !== attestationID) throw new Error(`the attestation was recorded as ${attested.attestation_id}, not ${attestationID}`);
    log(`carol attested ${ACCOUNT} under policy ${policyHash} (audit entry ${attested.entry.index})`);

    const auditSummary = await audit(dave);
    process.stdout.write(JSON.stringify({
      request: id, content_version: created.request.content_version, content_digest: c.digest,
      approvers: approved.request.approvers, token: { jti: payload.jti, sub: payload.sub, aud: payload.aud, account: payload.bg_account, kid: protectedHeader.kid },
      post_review: pr.id, attestation: attestationID, refusals, audit: auditSummary,
    }, null, 2) + '\n');
  } finally {
    all.forEach((p) => p.api.close());
  }
}

main().catch((e) => {
  console.error(`flow: FAILED: ${e.stack ?? e}`);
  process.exit(1);
});
