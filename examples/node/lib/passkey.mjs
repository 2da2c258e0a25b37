// docs/signing.md "Passkey bindings" and "Passkey reviews" with node:crypto:
// the binding statement an approver signs with their certificate key, the
// COSE keys it carries, and WebAuthn assertions over review statements,
// judged in the spec's order so that a refusal names the same rule the Go
// verifier names.
import { createHash, createPublicKey, verify as cryptoVerify, constants } from 'node:crypto';
import { isIP } from 'node:net';
import { VerifyError, parseTimeSec, verifyStatementSignature, checkDER, MAX_SKEW_SECONDS } from './signing.mjs';

const refuse = (reason, message) => { throw new VerifyError(reason, message); };
const sha256 = (b) => createHash('sha256').update(b).digest();

export const BINDING_CONTEXT = 'breakglass passkey binding v1';
export const MAX_BINDING_BYTES = 4096;
export const MAX_CREDENTIAL_ID = 1023;
export const MAX_CLIENT_DATA = 4096;

// ---- CBOR, as much as a COSE_Key needs ----

// readCBOR decodes one CBOR data item of the kinds a COSE_Key holds
// (unsigned and negative integers, byte and text strings, maps, arrays)
// with definite lengths, and returns [value, next offset].
function readCBOR(b, i, depth = 0) {
  if (depth > 4 || i >= b.length) throw new Error('truncated or too deep');
  const major = b[i] >> 5;
  const info = b[i] & 0x1f;
  i++;
  let n;
  if (info < 24) n = info;
  else if (info === 24) { n = b[i]; i += 1; } else if (info === 25) { n = b.readUInt16BE(i); i += 2; } else if (info === 26) { n = b.readUInt32BE(i); i += 4; } else if (info === 27) {
    const big = b.readBigUInt64BE(i);
    if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error('integer too large');
    n = Number(big); i += 8;
  } else throw new Error('indefinite lengths are not allowed');
  if (i > b.length) throw new Error('truncated');
  switch (major) {
    case 0: return [n, i];
    case 1: return [-1 - n, i];
    case 2: case 3: {
      if (i + n > b.length) throw new Error('truncated string');
      const s = b.subarray(i, i + n);
      return [major === 2 ? Buffer.from(s) : s.toString('utf8'), i + n];
    }
    case 4: {
      const out = [];
      for (let j = 0; j < n; j++) { let v; [v, i] = readCBOR(b, i, depth + 1); out.push(v); }
      return [out, i];
    }
    case 5: {
      const out = new Map();
      for (let j = 0; j < n; j++) {
        let k; let v;
        [k, i] = readCBOR(b, i, depth + 1);
        [v, i] = readCBOR(b, i, depth + 1);
        if (out.has(k)) throw new Error(`map key ${k} twice`);
        out.set(k, v);
      }
      return [out, i];
    }
    default: throw new Error(`CBOR major type ${major} is not in a COSE key`);
  }
}

export const ALG = { ES256: -7, EdDSA: -8, RS256: -257 };

// parseCOSEKey reads a COSE_Key (RFC 9052 section 7) of the three accepted
// algorithms into a node:crypto public key: ES256 (EC2, P-256), EdDSA (OKP,
// Ed25519), RS256 (RSA of at least 2048 bits).
export function parseCOSEKey(bytes) {
  let m;
  try {
    const [v, end] = readCBOR(Buffer.from(bytes), 0);
    if (end !== bytes.length) throw new Error('bytes after the key');
    if (!(v instanceof Map)) throw new Error('not a CBOR map');
    m = v;
  } catch (e) {
    throw new Error(`not a COSE key: ${e.message}`);
  }
  const kty = m.get(1);
  const alg = m.get(3);
  const bytesOf = (label, len) => {
    const x = m.get(label);
    if (!Buffer.isBuffer(x) || (len && x.length !== len)) throw new Error(`COSE key parameter ${label} is not ${len ? len + ' bytes' : 'a byte string'}`);
    return x;
  };
  if (kty === 2 && alg === ALG.ES256 && m.get(-1) === 1) {
    const jwk = { kty: 'EC', crv: 'P-256', x: bytesOf(-2, 32).toString('base64url'), y: bytesOf(-3, 32).toString('base64url') };
    return { alg, publicKey: createPublicKey({ key: jwk, format: 'jwk' }) };
  }
  if (kty === 1 && alg === ALG.EdDSA && m.get(-1) === 6) {
    return { alg, publicKey: createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: bytesOf(-2, 32).toString('base64url') }, format: 'jwk' }) };
  }
  if (kty === 3 && alg === ALG.RS256) {
    const n = bytesOf(-1);
    const publicKey = createPublicKey({ key: { kty: 'RSA', n: n.toString('base64url'), e: bytesOf(-2).toString('base64url') }, format: 'jwk' });
    if (publicKey.asymmetricKeyDetails.modulusLength < 2048) throw new Error('an RSA key must have at least 2048 bits');
    return { alg, publicKey };
  }
  throw new Error(`COSE key type ${kty} with algorithm ${alg} is not ES256 (-7), EdDSA (-8) or RS256 (-257)`);
}

// ---- bindings ----

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

// checkRPID accepts a WebAuthn RP ID: a lower-case domain, never an IP
// address.
export function checkRPID(id) {
  if (id.length === 0 || id.length > 253 || isIP(id) !== 0) throw new Error(`the RP ID ${id} is not a domain name`);
  for (const l of id.split('.')) if (!LABEL.test(l)) throw new Error(`the RP ID ${id} is not a lower-case domain name`);
}

// checkWebOrigin accepts an origin as a browser serialises it, https://host
// with an optional non-default port and nothing after, on the RP ID.
export function checkWebOrigin(origin, rpID) {
  const m = /^https:\/\/([^/?#@:\s\\]+)(?::([1-9][0-9]{0,4}))?$/.exec(origin);
  if (!m) throw new Error(`the web origin ${origin} is not https://host[:port]`);
  if (m[2] && (Number(m[2]) > 65535 || m[2] === '443')) throw new Error(`the web origin ${origin} has a port a browser would not write`);
  const host = m[1];
  if (host !== rpID && !host.endsWith('.' + rpID)) throw new Error(`the web origin ${origin} is not on the RP ID ${rpID}`);
}

const BINDING_RE = new RegExp('^' + BINDING_CONTEXT + '\\n' +
  'origin ([\\x21-\\x7E]{1,255})\\n' +
  'principal ([A-Za-z0-9][A-Za-z0-9._@-]{0,127})\\n' +
  'credential ([A-Za-z0-9_-]+)\\n' +
  'key ([A-Za-z0-9+/]+={0,2})\\n' +
  'rp_id ([\\x21-\\x7E]+)\\n' +
  'web_origin ([\\x21-\\x7E]+)\\n' +
  'time ([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)\\n$');

// parseBinding reads a binding statement strictly: grammar, canonical
// base64url credential and base64 key, a COSE key of an accepted
// algorithm, an RP ID that is a domain and a web origin on it.
export function parseBinding(bytes) {
  const b = Buffer.from(bytes);
  if (b.length > MAX_BINDING_BYTES || !b.every((c) => c < 0x80)) refuse('malformed', 'the binding is over 4096 bytes or not US-ASCII');
  const m = BINDING_RE.exec(b.toString('latin1'));
  if (!m) refuse('malformed', 'the binding does not match the grammar of docs/signing.md');
  const [, origin, principal, credText, keyText, rpID, webOrigin, time] = m;
  const credential = Buffer.from(credText, 'base64url');
  if (credential.toString('base64url') !== credText || credential.length > MAX_CREDENTIAL_ID) refuse('malformed', 'the credential ID is not canonical base64url of at most 1023 bytes');
  const key = Buffer.from(keyText, 'base64');
  if (key.toString('base64') !== keyText) refuse('malformed', 'the key is not canonical base64');
  let cose;
  try {
    cose = parseCOSEKey(key);
    checkRPID(rpID);
    checkWebOrigin(webOrigin, rpID);
    parseTimeSec(time);
  } catch (e) {
    refuse('malformed', e.message);
  }
  return { origin, principal, credential, key, cose, rpID, webOrigin, time, seconds: parseTimeSec(time) };
}

// verifyBinding is the whole judgement of a binding presented with the
// certificate whose key signed it: parse, signature (as a review
// statement's), then who signed (signer: the certificate must name the
// principal line), the deployment (log) and the time.
export function verifyBinding(certPublicKey, certPrincipal, bytes, sig, origin, nowSeconds) {
  const b = parseBinding(bytes);
  verifyStatementSignature(certPublicKey, bytes, sig);
  if (b.principal !== certPrincipal) refuse('signer', `the binding names ${b.principal} but was signed with the certificate key of ${certPrincipal}`);
  if (b.origin !== origin) refuse('log', `the binding is for log ${b.origin}, not ${origin}`);
  const skew = b.seconds - nowSeconds;
  if (skew > MAX_SKEW_SECONDS || skew < -MAX_SKEW_SECONDS) refuse('time', `the binding's time is ${skew} s from the verifier's clock`);
  return b;
}

// ---- assertions ----

// topLevelMembers returns the member names of a JSON object, in order and
// with repeats, checking the whole text is one well-formed JSON value
// (JSON.parse alone keeps the last of two equal names).
function topLevelMembers(text) {
  let i = 0;
  const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i])) i++; };
  const fail = () => { throw new Error('the client data is not one JSON object'); };
  const str = () => {
    const start = i;
    if (text[i] !== '"') fail();
    i++;
    while (i < text.length && text[i] !== '"') {
      if (text[i] === '\\') i++;
      else if (text.charCodeAt(i) < 0x20) fail();
      i++;
    }
    if (i >= text.length) fail();
    i++;
    return JSON.parse(text.slice(start, i));
  };
  const value = (depth) => {
    if (depth > 32) fail();
    ws();
    if (text[i] === '{') {
      i++; ws();
      const names = [];
      if (text[i] === '}') { i++; return names; }
      for (;;) {
        ws(); names.push(str()); ws();
        if (text[i++] !== ':') fail();
        value(depth + 1); ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i++] !== '}') fail();
        return names;
      }
    }
    if (text[i] === '[') {
      i++; ws();
      if (text[i] === ']') { i++; return null; }
      for (;;) {
        value(depth + 1); ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i++] !== ']') fail();
        return null;
      }
    }
    if (text[i] === '"') { str(); return null; }
    const m = /^(?:true|false|null|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)/.exec(text.slice(i));
    if (!m) fail();
    i += m[0].length;
    return null;
  };
  ws();
  if (text[i] !== '{') fail();
  const names = value(0);
  ws();
  if (i !== text.length) fail();
  return names;
}

const CHECKED = ['type', 'challenge', 'origin', 'crossOrigin', 'topOrigin'];
// fold is simple Unicode case folding as far as these names need it: the
// long s folds to s, the Kelvin sign to k.
const fold = (s) => s.replace(/\u017f/g, 's').replace(/\u212a/g, 'k').toLowerCase();

// parseClientData reads clientDataJSON as WebAuthn's CollectedClientData:
// one object, no member twice, none a case variant of a checked name.
function parseClientData(bytes) {
  if (bytes.length > MAX_CLIENT_DATA) throw new Error('the client data is over 4096 bytes');
  const text = Buffer.from(bytes).toString('utf8');
  const names = topLevelMembers(text);
  if (new Set(names).size !== names.length) throw new Error('the client data has a member twice');
  for (const n of names) for (const want of CHECKED) if (n !== want && fold(n) === fold(want)) throw new Error(`the client data has ${n}, a case variant of ${want}`);
  const cd = JSON.parse(text);
  for (const n of ['type', 'challenge', 'origin', 'topOrigin']) if (n in cd && typeof cd[n] !== 'string') throw new Error(`the client data's ${n} is not a string`);
  if ('crossOrigin' in cd && typeof cd.crossOrigin !== 'boolean') throw new Error('the client data\'s crossOrigin is not a boolean');
  return cd;
}

// verifyAssertion judges a WebAuthn assertion over a review statement by
// the bound credential (WebAuthn Level 3 section 7.2, user verification
// required), in the spec's order, then the signature counter against the
// credential's last one. It returns the counter.
export function verifyAssertion(binding, statement, a, lastCounter) {
  const { credential, authenticatorData: ad, clientDataJSON, signature } = a;
  if (!credential?.length || !ad?.length || !clientDataJSON?.length || !signature?.length) refuse('malformed', 'an assertion needs its credential ID, authenticator data, client data and signature');
  if (!Buffer.from(credential).equals(binding.credential)) refuse('credential', 'the assertion is not by the bound credential');
  let cd;
  try { cd = parseClientData(clientDataJSON); } catch (e) { refuse('malformed', e.message); }
  if (cd.type !== 'webauthn.get') refuse('client-data-type', `the client data's type is ${cd.type}, not webauthn.get`);
  if (cd.challenge !== sha256(statement).toString('base64url')) refuse('challenge', 'the challenge is not the SHA-256 of this statement');
  if (cd.origin !== binding.webOrigin) refuse('origin', `the assertion was made on ${cd.origin}, not ${binding.webOrigin}`);
  if (cd.crossOrigin === true || (cd.topOrigin ?? '') !== '') refuse('cross-origin', 'the assertion was made in a cross-origin frame');
  // Authenticator data: RP ID hash (32), flags (1), counter (4), and
  // extensions only when ED is set; an assertion has no attested
  // credential data (AT).
  const flags = ad[32];
  if (ad.length < 37 || (flags & 0x40) || (!(flags & 0x80) && ad.length !== 37)) refuse('malformed', 'the authenticator data does not parse as an assertion\'s');
  if (!Buffer.from(ad.subarray(0, 32)).equals(sha256(binding.rpID))) refuse('rp-id', `the authenticator data is for another relying party than ${binding.rpID}`);
  if (!(flags & 0x01)) refuse('user-presence', 'user presence (UP) is not set');
  if (!(flags & 0x04)) refuse('user-verification', 'user verification (UV) is not set');
  const signed = Buffer.concat([Buffer.from(ad), sha256(clientDataJSON)]);
  const { alg, publicKey } = binding.cose;
  const sig = Buffer.from(signature);
  let ok = false;
  if (alg === ALG.ES256) ok = checkDER(sig) === null && cryptoVerify('sha256', signed, { key: publicKey, dsaEncoding: 'der' }, sig);
  else if (alg === ALG.EdDSA) ok = sig.length === 64 && cryptoVerify(null, signed, publicKey, sig);
  else if (alg === ALG.RS256) ok = cryptoVerify('sha256', signed, { key: publicKey, padding: constants.RSA_PKCS1_PADDING }, sig);
  if (!ok) refuse('signature', 'the assertion\'s signature does not verify with the bound key');
  const counter = Buffer.from(ad).readUInt32BE(33);
  if (!(lastCounter === 0 && counter === 0) && !(counter > lastCounter)) refuse('counter', `the signature counter ${counter} does not follow ${lastCounter}: a replayed or cloned credential`);
  return counter;
}
