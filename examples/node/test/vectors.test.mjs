// Every vector of testdata/vectors, judged by lib/signing.mjs: the texts
// rebuilt from their inputs byte for byte, every digest, our own
// signatures (Ed25519 and RSA PKCS #1 v1.5 are deterministic, so they must
// equal the vectors'), and the verdict and reason of each vector, accepted
// and refused. The Go tests (format/vectors) reach the same verdicts on the
// same files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import * as s from '../lib/signing.mjs';
import * as pk from '../lib/passkey.mjs';

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../testdata/vectors');
const load = (name) => JSON.parse(readFileSync(path.join(dir, name), 'utf8'));
const URI_PREFIX = 'spiffe://breakglass.test/user/';

// The files this client knows. A new kind of vector must be taught to it
// (and to docs/signing.md) before the suite passes again.
const KNOWN = ['keys.json', 'request-content.json', 'account-attestation.json', 'request-statement.json', 'review-statement.json', 'key-rotation.json', 'audit-entry.json', 'checkpoint.json',
  'passkey-binding.json', 'passkey-review.json', 'policy-statement.json'];

test('every vector file is one this client checks', () => {
  const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
  assert.deepEqual(files.filter((f) => !KNOWN.includes(f)), [], 'testdata/vectors has files examples/node/test/vectors.test.mjs does not check');
  assert.deepEqual(KNOWN.filter((f) => !files.includes(f)), [], 'vector files are missing');
});

const keys = Object.fromEntries(load('keys.json').keys.map((k) => [k.name, {
  ...k,
  priv: createPrivateKey(k.private_key_pem),
  pub: createPublicKey(k.public_key_pem),
  cert: k.certificate_pem ? new X509Certificate(k.certificate_pem) : null,
}]));

// judge runs fn and returns the reason it refuses with, or '' for accept.
async function judge(fn) {
  try {
    await fn();
    return '';
  } catch (e) {
    if (e instanceof s.VerifyError) return e.reason;
    throw e;
  }
}

function verdictIs(v, reason) {
  assert.equal(reason === '' ? 'accept' : 'reject', v.verdict, `${v.name}: verdict (reason ${JSON.stringify(reason)})`);
  assert.equal(reason, v.reason ?? '', `${v.name}: reason`);
}

// principalOf is who a certificate names: its one URI SAN under the prefix.
function principalOf(cert) {
  const uris = (cert.subjectAltName ?? '').split(', ').filter((n) => n.startsWith('URI:')).map((n) => n.slice(4));
  assert.equal(uris.length, 1, 'one URI SAN');
  assert.ok(uris[0].startsWith(URI_PREFIX));
  return uris[0].slice(URI_PREFIX.length);
}

test('keys: thumbprints, certificates under the test CA, verifier keys', async () => {
  const ca = keys.ca;
  for (const k of Object.values(keys)) {
    assert.equal(await s.thumbprint(k.pub), k.kid, `${k.name}: kid`);
    assert.equal(await s.thumbprint(createPublicKey(k.priv)), k.kid, `${k.name}: the private key is the public key's`);
    if (k.principal) {
      assert.ok(k.cert.verify(ca.pub) && k.cert.checkIssued(ca.cert), `${k.name}: issued by the test CA`);
      assert.ok(k.cert.checkPrivateKey(k.priv), `${k.name}: the certificate is the key's`);
      assert.equal(principalOf(k.cert), k.principal);
    }
    if (k.note_verifier_key) {
      const v = s.parseVerifierKey(k.note_verifier_key);
      assert.equal(v.name, 'breakglass.test/vectors');
      assert.equal(await s.thumbprint(v.publicKey), k.kid);
    }
  }
});

test('request content: texts and digests in versions 1 and 2; the mistakes differ', () => {
  for (const v of load('request-content.json').vectors) {
    const i = v.inputs;
    const text = s.contentText({
      version: i.content_version, id: i.id, account: i.account, requester: i.requester, ttlSeconds: i.ttl_seconds, drill: i.drill,
      createdAtSeconds: i.created_at_seconds, createdAtNanos: i.created_at_nanos, ticket: i.ticket, justification: i.justification,
    });
    assert.equal(text.toString('utf8'), v.text, v.name);
    assert.equal(s.digest(text), v.digest, v.name);
    for (const w of v.wrong ?? []) {
      assert.notEqual(w.text, v.text, `${v.name}: ${w.why}`);
      assert.equal(s.digest(Buffer.from(w.text, 'utf8')), w.digest, `${v.name}: ${w.why}`);
      assert.notEqual(w.digest, v.digest, `${v.name}: ${w.why}`);
    }
  }
});

test('request content from the API: a Request message as @grpc/proto-loader gives it', () => {
  const v = load('request-content.json').vectors.find((x) => x.name === 'v2-fraction');
  const i = v.inputs;
  const msg = {
    id: i.id, account: i.account, requester: i.requester, justification: i.justification, ticket: i.ticket, drill: i.drill,
    requested_ttl: { seconds: String(i.ttl_seconds), nanos: 0 }, create_time: { seconds: String(i.created_at_seconds), nanos: i.created_at_nanos },
    content_version: i.content_version, content_digest: v.digest,
  };
  assert.equal(s.digest(s.contentText(s.contentOfRequest(msg))), v.digest);
  // An absent content_version (an older broker) is version 1.
  const v1 = load('request-content.json').vectors.find((x) => x.name === 'v1-fraction');
  assert.equal(s.digest(s.contentText(s.contentOfRequest({ ...msg, content_version: 0 }))), v1.digest);
});

test('request content refuses fields that could forge a line', () => {
  const base = { version: 2, id: '01938a2e-7c4b-7d3f-9a1e-5b6c7d8e9f01', account: 'prod-db', requester: 'alice', ttlSeconds: 1800, drill: false, createdAtSeconds: 1795956730, createdAtNanos: 0, ticket: '', justification: 'x' };
  assert.doesNotThrow(() => s.contentText(base));
  for (const bad of [{ account: 'prod-db\nrequester mallory' }, { requester: 'alice bob' }, { id: base.id.toUpperCase() }, { ttlSeconds: 1.5 }, { createdAtNanos: 1e9 }, { version: 3 }]) {
    assert.throws(() => s.contentText({ ...base, ...bad }), undefined, JSON.stringify(bad));
  }
});

test('account text of an attestation', () => {
  for (const v of load('account-attestation.json').vectors) {
    const text = s.accountText(v.inputs.account, v.inputs.policy_hash);
    assert.equal(text.toString(), v.text);
    assert.equal(s.digest(text), v.digest);
  }
});

test('request statements: texts, signatures and verdicts', async () => {
  for (const v of load('request-statement.json').vectors) {
    const text = Buffer.from(v.text, 'utf8');
    assert.equal(s.sha256(text).toString('hex'), v.sha256, `${v.name}: sha256`);
    const k = keys[v.key];
    assert.ok(k.cert.verify(keys.ca.pub), `${v.name}: the requester's certificate chains to the CA`);
    assert.equal(principalOf(k.cert), k.principal);
    if (v.inputs) {
      const i = v.inputs;
      const built = s.requestStatementText({ origin: i.origin, request: i.request, account: i.account, ttlSeconds: i.ttl_seconds, drill: i.drill,
        solo: i.solo, ticket: i.ticket, justification: i.justification, time: i.time });
      assert.equal(built.toString(), v.text, `${v.name}: the text from its inputs`);
      const ours = s.signStatement(k.priv, built);
      assert.doesNotThrow(() => s.verifyStatementSignature(k.cert.publicKey, built, ours), v.name);
      if (k.type !== 'ecdsa-p256' && v.verdict === 'accept') assert.equal(ours.toString('base64'), v.signature, `${v.name}: our ${k.type} signature`);
    }
    const e = v.expect;
    const reason = await judge(() => s.verifyRequestStatement(k.cert.publicKey, text, Buffer.from(v.signature, 'base64'),
      { origin: e.origin, request: e.request, account: e.account, ttlSeconds: e.ttl_seconds, defaultTTLSeconds: e.default_ttl_seconds,
        drill: e.drill, solo: e.solo, ticket: e.ticket, justification: e.justification }, s.parseTimeSec(e.now)));
    verdictIs(v, reason);
  }
});

test('review statements: texts, signatures and verdicts', async () => {
  for (const v of load('review-statement.json').vectors) {
    const text = Buffer.from(v.text, 'utf8');
    assert.equal(s.sha256(text).toString('hex'), v.sha256, `${v.name}: sha256`);
    const k = keys[v.key];
    assert.ok(k.cert.verify(keys.ca.pub), `${v.name}: the signer's certificate chains to the CA`);
    assert.equal(principalOf(k.cert), k.principal);
    if (v.inputs) {
      const built = s.statementText(v.inputs);
      assert.equal(built.toString(), v.text, `${v.name}: the text from its inputs`);
      // Our own signature over the same bytes verifies, and where the
      // algorithm is deterministic it is the vector's, byte for byte.
      const ours = s.signStatement(k.priv, built);
      assert.doesNotThrow(() => s.verifyStatementSignature(k.cert.publicKey, built, ours), v.name);
      if (k.type !== 'ecdsa-p256' && v.verdict === 'accept') assert.equal(ours.toString('base64'), v.signature, `${v.name}: our ${k.type} signature`);
    }
    const e = v.expect;
    const reason = await judge(() => s.verifyStatement(k.cert.publicKey, text, Buffer.from(v.signature, 'base64'),
      { type: e.type, origin: e.origin, request: e.request, content: e.content, comment: e.comment }, s.parseTimeSec(e.now)));
    verdictIs(v, reason);
  }
});

test('every statement type has an accepted and a refused vector', () => {
  const seen = {};
  for (const v of load('review-statement.json').vectors) {
    const type = v.expect.type;
    seen[type] = seen[type] ?? new Set();
    seen[type].add(v.verdict);
  }
  for (const type of s.STATEMENT_TYPES) assert.deepEqual([...(seen[type] ?? [])].sort(), ['accept', 'reject'], type);
});

test('key rotations', async () => {
  for (const v of load('key-rotation.json').vectors) {
    const text = Buffer.from(v.text, 'utf8');
    assert.equal(s.sha256(text).toString('hex'), v.sha256, v.name);
    if (v.inputs) assert.equal(s.rotationText({ ...v.inputs, key: Buffer.from(v.inputs.key, 'base64') }).toString(), v.text, v.name);
    const reason = await judge(() => s.verifyRotation(text, keys[v.old_key].pub, Buffer.from(v.old_signature, 'base64'), Buffer.from(v.new_signature, 'base64')));
    verdictIs(v, reason);
  }
});

test('audit entries: leaf hashes, signatures, the chain, and what they carry', async () => {
  const vectors = load('audit-entry.json').vectors;
  const created = {};
  for (const v of vectors) {
    const bytes = Buffer.from(v.entry, 'base64');
    assert.equal(s.leafHash(bytes).toString('hex'), v.leaf_hash, v.name);
    assert.equal(await s.thumbprint(keys[v.key].pub), v.key_id, v.name);
    let entry;
    const reason = await judge(() => { entry = s.verifyEntry(bytes, Buffer.from(v.signature, 'base64'), keys[v.key].pub, v.prev); });
    verdictIs(v, reason);
    if (reason !== '') continue;
    // What an auditor checks inside: a request_created's content digest
    // recomputed from the entry, and a review's statement against it.
    if (entry.type === 'request_created') {
      const content = s.contentOfEntry(entry);
      assert.equal(s.digest(s.contentText(content)), entry.payload.content_digest, `${v.name}: content_digest recomputed`);
      created[entry.request] = entry.payload.content_digest;
      // The request is signed by its requester: the statement says this
      // request, by the key of a certificate naming the entry's actor.
      const p = entry.payload;
      const cert = new X509Certificate(Buffer.from(p.certificate, 'base64'));
      assert.ok(cert.verify(keys.ca.pub));
      assert.equal(principalOf(cert), entry.actor);
      s.verifyRequestStatement(cert.publicKey, Buffer.from(p.statement, 'base64'), Buffer.from(p.signature, 'base64'),
        { origin: 'breakglass.test/vectors', request: entry.request, account: entry.account, ttlSeconds: p.ttl_seconds, defaultTTLSeconds: p.ttl_seconds,
          drill: p.drill, solo: Boolean(p.solo), ticket: p.ticket, justification: p.justification }, s.parseRFC3339(entry.time).seconds);
    }
    if (entry.type === 'request_reviewed') {
      const p = entry.payload;
      const cert = new X509Certificate(Buffer.from(p.certificate, 'base64'));
      assert.ok(cert.verify(keys.ca.pub));
      assert.equal(principalOf(cert), entry.actor);
      const st = s.verifyStatement(cert.publicKey, Buffer.from(p.statement, 'base64'), Buffer.from(p.signature, 'base64'),
        { type: p.decision, origin: 'breakglass.test/vectors', request: entry.request, content: created[entry.request], comment: p.comment },
        s.parseRFC3339(entry.time).seconds);
      assert.equal(st.type, 'approve');
    }
  }
});

test('checkpoints', () => {
  for (const v of load('checkpoint.json').vectors) {
    const leaves = v.leaf_hashes.map((h) => Buffer.from(h, 'hex'));
    const vk = keys[v.key].note_verifier_key;
    assert.equal(v.verifier_key, vk, v.name);
    let reason = '';
    try {
      const cp = s.verifyCheckpoint(v.note, v.verifier_key, v.origin);
      assert.equal(cp.root.toString('base64'), v.root_hash, v.name);
      assert.equal(cp.size, BigInt(v.size), v.name);
      s.checkTree(cp, leaves);
    } catch (e) {
      if (!(e instanceof s.VerifyError)) throw e;
      reason = e.reason;
    }
    verdictIs(v, reason);
  }
});

test('passkey bindings: texts, COSE keys, signatures by the certificate key and verdicts', async () => {
  for (const v of load('passkey-binding.json').vectors) {
    const text = Buffer.from(v.text, 'utf8');
    assert.equal(s.sha256(text).toString('hex'), v.sha256, v.name);
    if (v.inputs) {
      const i = v.inputs;
      const built = `${pk.BINDING_CONTEXT}\norigin ${i.origin}\nprincipal ${i.principal}\ncredential ${i.credential}\nkey ${i.key}\nrp_id ${i.rp_id}\nweb_origin ${i.web_origin}\ntime ${i.time}\n`;
      assert.equal(built, v.text, `${v.name}: the text from its inputs`);
      // The COSE key in the binding is the passkey's public key.
      const { publicKey } = pk.parseCOSEKey(Buffer.from(i.key, 'base64'));
      assert.equal(await s.thumbprint(publicKey), keys[v.passkey].kid, `${v.name}: the COSE key is ${v.passkey}'s`);
    }
    const signer = keys[v.expect.certificate];
    assert.ok(signer.cert.verify(keys.ca.pub), v.name);
    const reason = await judge(() => pk.verifyBinding(signer.cert.publicKey, principalOf(signer.cert), text, Buffer.from(v.signature, 'base64'),
      v.expect.origin, s.parseTimeSec(v.expect.now)));
    verdictIs(v, reason);
  }
});

test('passkey reviews: WebAuthn assertions over review statements', async () => {
  const bindings = Object.fromEntries(load('passkey-binding.json').vectors.filter((v) => v.verdict === 'accept')
    .map((v) => [v.name, pk.parseBinding(Buffer.from(v.text, 'utf8'))]));
  for (const v of load('passkey-review.json').vectors) {
    const statement = Buffer.from(v.statement, 'utf8');
    assert.doesNotThrow(() => s.parseStatement(statement), v.name);
    assert.equal(s.sha256(statement).toString('base64url'), v.challenge, `${v.name}: the challenge is the statement's SHA-256`);
    const b = bindings[v.binding];
    assert.ok(b, `${v.name}: binding ${v.binding}`);
    const reason = await judge(() => pk.verifyAssertion(b, statement, {
      credential: Buffer.from(v.credential, 'base64url'), authenticatorData: Buffer.from(v.authenticator_data, 'base64'),
      clientDataJSON: Buffer.from(v.client_data_json, 'utf8'), signature: Buffer.from(v.signature, 'base64'),
    }, v.last_counter));
    verdictIs(v, reason);
  }
});

test('passkey client data: duplicates and case variants are malformed', () => {
  const b = { credential: Buffer.from([1]), webOrigin: 'https://x.test', rpID: 'x.test', cose: null };
  const a = (cd) => ({ credential: Buffer.from([1]), authenticatorData: Buffer.alloc(37), clientDataJSON: Buffer.from(cd), signature: Buffer.from([1]) });
  for (const cd of ['{"type":"webauthn.get","type":"webauthn.get"}', '{"Type":"webauthn.get"}', '{"cro\u017fsOrigin":true}', '[]', '{"type":"webauthn.get"} x', '{"type":1}']) {
    assert.throws(() => pk.verifyAssertion(b, Buffer.from('s'), a(cd), 0), (e) => e.reason === 'malformed', cd);
  }
});

test('signature encodings: DER checks', () => {
  // Not minimal, negative, trailing bytes, and a long-form length where
  // the short one fits: each is refused before any verification.
  const good = Buffer.from('3006020101020101', 'hex');
  assert.equal(s.checkDER(good), null);
  for (const hex of ['300702020001020101', '3006020181020101', '300602010102010100', '30810602010102010', '3006020100020101', '3007020101020101']) {
    assert.notEqual(s.checkDER(Buffer.from(hex.length % 2 ? hex + '0' : hex, 'hex')), null, hex);
  }
});

test('times: strict, truncated, nanoseconds kept', () => {
  assert.equal(s.timeSec(new Date(Date.UTC(2026, 10, 29, 12, 53, 0, 999))), '2026-11-29T12:53:00Z');
  for (const bad of ['2026-02-30T00:00:00Z', '2026-11-29T24:00:00Z', '2026-11-29T12:53:60Z', '2026-11-29t12:53:00Z', '2026-11-29T12:53:00+00:00']) {
    assert.throws(() => s.parseTimeSec(bad), undefined, bad);
  }
  assert.deepEqual(s.parseRFC3339('2026-11-29T12:52:10.12Z'), { seconds: 1795956730, nanos: 120000000 });
  assert.equal(s.createdAtText(2, '1795956730', 1000), '2026-11-29T12:52:10.000001000Z');
  assert.equal(s.createdAtText(1, '1795956730', 1000), '2026-11-29T12:52:10.000001Z');
  assert.equal(s.createdAtText(1, '1795956730', 0), '2026-11-29T12:52:10Z');
});

test('policy statements: texts, signatures, bundle lines and verdicts', async () => {
  for (const v of load('policy-statement.json').vectors) {
    const text = Buffer.from(v.text, 'utf8');
    assert.equal(s.sha256(text).toString('hex'), v.sha256, `${v.name}: sha256`);
    const k = keys[v.key];
    assert.ok(k.cert.verify(keys.ca.pub), `${v.name}: the signer's certificate chains to the CA`);
    if (v.inputs) {
      const built = s.policyStatementText(v.inputs);
      assert.equal(built.toString(), v.text, `${v.name}: the text from its inputs`);
      const ours = s.signStatement(k.priv, built);
      assert.doesNotThrow(() => s.verifyStatementSignature(k.cert.publicKey, built, ours), v.name);
      if (k.type !== 'ecdsa-p256' && v.verdict === 'accept') assert.equal(ours.toString('base64'), v.signature, `${v.name}: our ${k.type} signature`);
    }
    if (v.bundle_line) {
      assert.equal(s.policyBundleLine(text, Buffer.from(v.signature, 'base64'), k.cert.raw), v.bundle_line, `${v.name}: bundle line`);
    }
    const e = v.expect;
    const reason = await judge(() => s.verifyPolicyStatement(k.cert.publicKey, text, Buffer.from(v.signature, 'base64'),
      { decision: e.decision, origin: e.origin, previous: e.previous, policy: e.policy, comment: e.comment }, s.parseTimeSec(e.now), e.max_age_seconds));
    verdictIs(v, reason);
  }
});
