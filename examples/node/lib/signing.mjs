// docs/signing.md in JavaScript, with node:crypto alone: the request
// content text and its digest, request statements, review statements (approve, deny,
// review-close, attest) with their signatures per key type and the
// verification rules, the account text of an attestation, key rotation
// statements, audit entries and checkpoints. Written from the spec; the
// vectors in testdata/vectors check every function here (npm test).
import { createHash, createPublicKey, sign as cryptoSign, verify as cryptoVerify, constants, KeyObject } from 'node:crypto';
import { calculateJwkThumbprint } from 'jose';

// ---- errors ----

// VerifyError is a refusal; reason is the rule of docs/signing.md
// ("Verification rules") that refuses: malformed, signature-encoding,
// signature, or the line that does not match (type, origin, request,
// content, comment, time); for entries and checkpoints also prev and root.
export class VerifyError extends Error {
  constructor(reason, message) {
    super(message);
    this.name = 'VerifyError';
    this.reason = reason;
  }
}

const refuse = (reason, message) => { throw new VerifyError(reason, message); };

// ---- conventions ----

const DIGEST = /^sha256:[0-9a-f]{64}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ORIGIN = /^[\x21-\x7E]{1,255}$/;
const LOG_ORIGIN = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}$/;
const ACCOUNT = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const PRINCIPAL = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/;
const TIME_SEC = /^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z$/;
const KID = /^[A-Za-z0-9_-]{43}$/;
const HEX64 = /^[0-9a-f]{64}$/;

export const MAX_STATEMENT_BYTES = 1024;
export const MAX_SKEW_SECONDS = 300;

export const sha256 = (b) => createHash('sha256').update(b).digest();

// digest is "sha256:" and the lower-case hex SHA-256 of the bytes.
export const digest = (b) => 'sha256:' + sha256(b).toString('hex');

// commentDigest is the digest a statement carries for a comment or notes:
// of their UTF-8 bytes exactly as sent (the empty comment included).
export const commentDigest = (comment) => digest(Buffer.from(comment, 'utf8'));

const b64 = (s) => Buffer.from(s, 'utf8').toString('base64');

const need = (ok, what) => { if (!ok) throw new Error(what); };

// civil writes whole seconds since the epoch as YYYY-MM-DDTHH:MM:SS (UTC).
// Seconds arrive from the API as an int64, which @grpc/proto-loader gives
// as a string (longs: String); they are exact as a Number for any date
// this format can hold (years 0000 to 9999).
function civil(seconds) {
  const s = Number(seconds);
  need(Number.isSafeInteger(s) && s >= -62167219200 && s <= 253402300799, `time ${seconds} is outside years 0000 to 9999`);
  return new Date(s * 1000).toISOString().slice(0, 19);
}

// timeSec writes a time as the statements write it: UTC, to the second,
// with Z. A Date is truncated to its second, never rounded.
export function timeSec(t) {
  const ms = t instanceof Date ? t.getTime() : Number(t);
  need(Number.isFinite(ms), `not a time: ${t}`);
  return civil(Math.floor(ms / 1000)) + 'Z';
}

// parseTimeSec reads a time-sec strictly (a real date, 00-23:00-59:00-59)
// and returns its seconds since the epoch; it throws on any other form.
export function parseTimeSec(s) {
  const m = TIME_SEC.exec(s);
  need(m, `time ${JSON.stringify(s)} is not RFC 3339 UTC to the second`);
  const [y, mo, d, h, mi, se] = m.slice(1).map(Number);
  const date = new Date(0);
  date.setUTCFullYear(y, mo - 1, d);
  date.setUTCHours(h, mi, se, 0);
  const secs = date.getTime() / 1000;
  need(h < 24 && mi < 60 && se < 60 && civil(secs) + 'Z' === s, `time ${JSON.stringify(s)} is not a real UTC time`);
  return secs;
}

// parseRFC3339 reads an RFC 3339 UTC time with any fraction (as the audit
// log and JSON encodings of the API write them) into seconds and
// nanoseconds, without going through Date, which holds milliseconds only.
export function parseRFC3339(s) {
  const m = /^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?Z$/.exec(s);
  need(m, `time ${JSON.stringify(s)} is not RFC 3339 UTC`);
  return { seconds: parseTimeSec(m[1] + 'Z'), nanos: m[2] ? Number(m[2].padEnd(9, '0')) : 0 };
}

// ---- request content ----

// createdAtText writes created_at in the request's content version:
// version 2 always has nine fractional digits; version 1 trims the
// fraction's trailing zeros and drops it, dot included, on a whole second.
export function createdAtText(version, seconds, nanos) {
  need(Number.isInteger(nanos) && nanos >= 0 && nanos <= 999999999, `nanoseconds ${nanos} out of range`);
  const frac = String(nanos).padStart(9, '0');
  if (version === 2) return `${civil(seconds)}.${frac}Z`;
  if (version === 1) return nanos === 0 ? `${civil(seconds)}Z` : `${civil(seconds)}.${frac.replace(/0+$/, '')}Z`;
  throw new Error(`unknown content version ${version}`);
}

// contentText builds a request's content text (docs/signing.md, "Request
// content") from its fields. It refuses fields outside the grammar, since a
// value with a space or a newline could forge another line.
export function contentText(c) {
  const version = c.version;
  need(version === 1 || version === 2, `unknown content version ${version}: this client knows 1 and 2`);
  need(UUID.test(c.id), `request id ${JSON.stringify(c.id)} is not a lower-case UUID`);
  need(ACCOUNT.test(c.account), `account ${JSON.stringify(c.account)} is not an account name`);
  need(PRINCIPAL.test(c.requester), `requester ${JSON.stringify(c.requester)} is not a principal name`);
  need(Number.isSafeInteger(c.ttlSeconds) && c.ttlSeconds >= 1 && c.ttlSeconds <= 31536000, `ttl_seconds ${c.ttlSeconds} out of range`);
  need(typeof c.drill === 'boolean', 'drill must be a boolean');
  need(typeof c.ticket === 'string' && typeof c.justification === 'string', 'ticket and justification must be strings');
  const text = `breakglass request content v${version}\n` +
    `id ${c.id}\n` +
    `account ${c.account}\n` +
    `requester ${c.requester}\n` +
    `ttl_seconds ${c.ttlSeconds}\n` +
    `drill ${c.drill}\n` +
    `created_at ${createdAtText(version, c.createdAtSeconds, c.createdAtNanos)}\n` +
    `ticket ${b64(c.ticket)}\n` +
    `justification ${b64(c.justification)}\n`;
  return Buffer.from(text, 'utf8');
}

// contentOfRequest reads the content fields from a Request message as
// @grpc/proto-loader gives it (keepCase, longs as strings): create_time's
// seconds and nanos are kept apart, never put through a Date.
export function contentOfRequest(r) {
  need(r.requested_ttl && Number(r.requested_ttl.nanos || 0) === 0, 'requested_ttl must be whole seconds');
  need(r.create_time, 'the request has no create_time');
  return {
    version: r.content_version ? Number(r.content_version) : 1,
    id: r.id, account: r.account, requester: r.requester,
    ttlSeconds: Number(r.requested_ttl.seconds), drill: Boolean(r.drill),
    createdAtSeconds: Number(r.create_time.seconds), createdAtNanos: Number(r.create_time.nanos || 0),
    ticket: r.ticket || '', justification: r.justification || '',
  };
}

// ---- review statements ----

export const STATEMENT_CONTEXT = 'breakglass review statement v1';
export const STATEMENT_TYPES = ['approve', 'deny', 'review-close', 'attest'];

// statementText builds a review statement. s.comment is the comment or
// notes themselves; the statement carries their digest. s.time is a Date
// (the signer's clock, truncated to the second) or a time-sec string.
export function statementText(s) {
  need(STATEMENT_TYPES.includes(s.type), `statement type ${JSON.stringify(s.type)} is not one of ${STATEMENT_TYPES.join(', ')}`);
  need(LOG_ORIGIN.test(s.origin), `origin ${JSON.stringify(s.origin)} is not a log origin`);
  need(UUID.test(s.request), `request ${JSON.stringify(s.request)} is not a lower-case UUID`);
  need(DIGEST.test(s.content), `content ${JSON.stringify(s.content)} is not sha256:<64 lower-case hex>`);
  need(typeof s.comment === 'string', 'comment must be a string');
  const time = typeof s.time === 'string' ? (parseTimeSec(s.time), s.time) : timeSec(s.time);
  const text = `${STATEMENT_CONTEXT}\ntype ${s.type}\norigin ${s.origin}\nrequest ${s.request}\n` +
    `content ${s.content}\ncomment ${commentDigest(s.comment)}\ntime ${time}\n`;
  const b = Buffer.from(text, 'ascii');
  need(b.length <= MAX_STATEMENT_BYTES, 'the statement is over 1024 bytes');
  return b;
}

const STATEMENT_RE = new RegExp('^' + STATEMENT_CONTEXT + '\\n' +
  'type (approve|deny|review-close|attest)\\n' +
  'origin ([\\x21-\\x7E]{1,255})\\n' +
  'request ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\\n' +
  'content (sha256:[0-9a-f]{64})\\n' +
  'comment (sha256:[0-9a-f]{64})\\n' +
  'time ([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)\\n$');

const isASCII = (b) => b.every((c) => c < 0x80);

// parseStatement reads a statement's bytes exactly by the grammar: any
// other byte, order, whitespace or value form is malformed.
export function parseStatement(bytes) {
  const b = Buffer.from(bytes);
  if (b.length > MAX_STATEMENT_BYTES) refuse('malformed', `the statement is ${b.length} bytes; at most ${MAX_STATEMENT_BYTES}`);
  if (!isASCII(b)) refuse('malformed', 'the statement is not US-ASCII');
  const m = STATEMENT_RE.exec(b.toString('latin1'));
  if (!m) refuse('malformed', 'the statement does not match the grammar of docs/signing.md');
  let seconds;
  try { seconds = parseTimeSec(m[6]); } catch (e) { refuse('malformed', e.message); }
  return { type: m[1], origin: m[2], request: m[3], content: m[4], comment: m[5], time: m[6], seconds };
}

// ---- signatures by key type ----

const CURVE_BYTES = { prime256v1: 32, secp384r1: 48, secp521r1: 66 };

const keyOf = (k) => (k instanceof KeyObject ? k : createPublicKey(k));

// signStatement signs bytes with the private key of one's client
// certificate, by its type: ECDSA over SHA-256 in ASN.1 DER (node's
// default dsaEncoding), Ed25519 over the bytes themselves, RSA PKCS #1
// v1.5 with SHA-256.
export function signStatement(privateKey, bytes) {
  switch (privateKey.asymmetricKeyType) {
    case 'ec': return cryptoSign('sha256', bytes, { key: privateKey, dsaEncoding: 'der' });
    case 'ed25519': return cryptoSign(null, bytes, privateKey);
    case 'rsa': return cryptoSign('sha256', bytes, { key: privateKey, padding: constants.RSA_PKCS1_PADDING });
    default: throw new Error(`statements cannot be signed with a ${privateKey.asymmetricKeyType} key: use ECDSA, Ed25519 or RSA`);
  }
}

// readDERLength reads a minimal DER length at b[i]; it returns
// [length, next index] or null.
function readDERLength(b, i) {
  if (i >= b.length) return null;
  const first = b[i];
  if (first < 0x80) return [first, i + 1];
  const n = first & 0x7f;
  if (n === 0 || n > 2 || i + 1 + n > b.length) return null;
  let len = 0;
  for (let j = 0; j < n; j++) len = len * 256 + b[i + 1 + j];
  if (len < 0x80 || (n === 2 && len < 0x100)) return null; // not minimal
  return [len, i + 1 + n];
}

// checkDER says what is wrong with an ECDSA signature that is not one DER
// SEQUENCE of two positive, minimally encoded INTEGERs with nothing after
// it; it returns null for a well-formed one.
export function checkDER(sig) {
  if (sig.length < 2 || sig[0] !== 0x30) return `got ${sig.length} bytes that are not a DER SEQUENCE`;
  const seq = readDERLength(sig, 1);
  if (!seq || seq[1] + seq[0] > sig.length) return `got ${sig.length} bytes that are not a DER SEQUENCE`;
  if (seq[1] + seq[0] !== sig.length) return 'got bytes after the DER SEQUENCE';
  let i = seq[1];
  for (const name of ['r', 's']) {
    if (i >= sig.length || sig[i] !== 0x02) return `${name} is not a minimally encoded DER INTEGER`;
    const l = readDERLength(sig, i + 1);
    if (!l || l[0] === 0 || l[1] + l[0] > sig.length) return `${name} is not a minimally encoded DER INTEGER`;
    const v = sig.subarray(l[1], l[1] + l[0]);
    if (v.length > 1 && ((v[0] === 0x00 && v[1] < 0x80) || (v[0] === 0xff && v[1] >= 0x80))) return `${name} is not a minimally encoded DER INTEGER`;
    if (v[0] >= 0x80 || v.every((x) => x === 0)) return `${name} is not positive`;
    i = l[1] + l[0];
  }
  if (i !== sig.length) return 'the SEQUENCE holds more than r and s';
  return null;
}

// verifyStatementSignature checks a statement's signature with the public
// key of the signer's certificate. A signature in another encoding than
// the key type's is refused as signature-encoding, saying what was
// expected; one that does not verify as signature.
export function verifyStatementSignature(publicKey, bytes, sig) {
  const key = keyOf(publicKey);
  sig = Buffer.from(sig);
  let ok;
  switch (key.asymmetricKeyType) {
    case 'ec': {
      const n = CURVE_BYTES[key.asymmetricKeyDetails.namedCurve];
      if (!n) refuse('signature', `ECDSA keys are P-256, P-384 or P-521, not ${key.asymmetricKeyDetails.namedCurve}`);
      const problem = checkDER(sig);
      if (problem) {
        const hint = sig.length === 2 * n ? `; these ${sig.length} bytes look like a raw r||s signature (IEEE P1363, what WebCrypto returns): encode r and s as a DER SEQUENCE of two INTEGERs` : '';
        refuse('signature-encoding', `expected an ASN.1 DER ECDSA signature (RFC 3279: SEQUENCE { r INTEGER, s INTEGER }) over SHA-256 of the statement, ${problem}${hint}`);
      }
      ok = cryptoVerify('sha256', bytes, { key, dsaEncoding: 'der' }, sig);
      break;
    }
    case 'ed25519':
      if (sig.length !== 64) refuse('signature-encoding', `expected a 64-byte Ed25519 signature (RFC 8032) of the statement itself, got ${sig.length} bytes`);
      ok = cryptoVerify(null, bytes, key, sig);
      break;
    case 'rsa': {
      if (key.asymmetricKeyDetails.modulusLength < 1024) refuse('signature', `an RSA key of ${key.asymmetricKeyDetails.modulusLength} bits is below the 1024 bits verifiers accept`);
      const size = Math.ceil(key.asymmetricKeyDetails.modulusLength / 8);
      if (sig.length !== size) refuse('signature-encoding', `expected an RSA PKCS #1 v1.5 SHA-256 signature of ${size} bytes (the modulus size), got ${sig.length} bytes`);
      ok = cryptoVerify('sha256', bytes, { key, padding: constants.RSA_PKCS1_PADDING }, sig);
      break;
    }
    default:
      refuse('signature', `a ${key.asymmetricKeyType} key cannot sign statements: ECDSA, Ed25519 or RSA`);
  }
  if (!ok) refuse('signature', 'the signature does not verify with the certificate\'s key');
}

// checkStatement checks a parsed statement against the action it is
// presented with, in the spec's order: type, origin, request, content,
// comment (the comment itself, whose digest is compared), then the time,
// within five minutes of nowSeconds either way, inclusive.
export function checkStatement(st, expect, nowSeconds) {
  if (st.type !== expect.type) refuse('type', `the statement says ${st.type} but the action is ${expect.type}`);
  if (st.origin !== expect.origin) refuse('origin', `the statement is for log ${JSON.stringify(st.origin)}, not ${JSON.stringify(expect.origin)}`);
  if (st.request !== expect.request) refuse('request', `the statement is for ${st.request}, not ${expect.request}`);
  if (st.content !== expect.content) refuse('content', 'the statement\'s content digest is not the one expected: it was signed over other content');
  if (st.comment !== commentDigest(expect.comment)) refuse('comment', 'the statement\'s comment digest is not the comment\'s');
  const skew = st.seconds - nowSeconds;
  if (skew > MAX_SKEW_SECONDS || skew < -MAX_SKEW_SECONDS) refuse('time', `the statement's time ${st.time} is ${skew} s from the verifier's clock; at most ${MAX_SKEW_SECONDS} s is allowed`);
}

// verifyStatement is the whole judgement of one statement: parse,
// signature, bindings. It returns the parsed statement or throws a
// VerifyError.
export function verifyStatement(publicKey, bytes, sig, expect, nowSeconds) {
  const st = parseStatement(bytes);
  verifyStatementSignature(publicKey, bytes, sig);
  checkStatement(st, expect, nowSeconds);
  return st;
}

// ---- request statements ----

export const REQUEST_CONTEXT = 'breakglass request statement v1';
export const MAX_REQUEST_BYTES = 4096;
export const MAX_TTL_SECONDS = 31536000;

// requestStatementText builds the statement a requester signs when they
// ask for access (docs/signing.md, "Request statements"): r.request is a
// fresh UUID they choose, which becomes the request's id; r.ttlSeconds is
// requested_ttl.seconds, 0 when none is asked (the account's longest).
export function requestStatementText(r) {
  need(LOG_ORIGIN.test(r.origin), `origin ${JSON.stringify(r.origin)} is not a log origin`);
  need(UUID.test(r.request), `request ${JSON.stringify(r.request)} is not a lower-case UUID`);
  need(ACCOUNT.test(r.account), `account ${JSON.stringify(r.account)} is not an account name`);
  need(Number.isSafeInteger(r.ttlSeconds) && r.ttlSeconds >= 0 && r.ttlSeconds <= MAX_TTL_SECONDS, `ttl_seconds ${r.ttlSeconds} out of range`);
  need(typeof r.drill === 'boolean' && typeof r.solo === 'boolean', 'drill and solo must be booleans');
  need(typeof r.ticket === 'string' && typeof r.justification === 'string', 'ticket and justification must be strings');
  const time = typeof r.time === 'string' ? (parseTimeSec(r.time), r.time) : timeSec(r.time);
  const b = Buffer.from(`${REQUEST_CONTEXT}\norigin ${r.origin}\nrequest ${r.request}\naccount ${r.account}\nttl_seconds ${r.ttlSeconds}\n` +
    `drill ${r.drill}\nsolo ${r.solo}\nticket ${b64(r.ticket)}\njustification ${b64(r.justification)}\ntime ${time}\n`, 'ascii');
  need(b.length <= MAX_REQUEST_BYTES, `the request statement is over ${MAX_REQUEST_BYTES} bytes`);
  return b;
}

const B64 = '(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?';
const REQUEST_RE = new RegExp('^' + REQUEST_CONTEXT + '\\n' +
  'origin ([\\x21-\\x7E]{1,255})\\n' +
  'request ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\\n' +
  'account ([a-z0-9][a-z0-9._-]{0,63})\\n' +
  'ttl_seconds (0|[1-9][0-9]{0,7})\\n' +
  'drill (true|false)\\n' +
  'solo (true|false)\\n' +
  `ticket (${B64})\\n` +
  `justification (${B64})\\n` +
  'time ([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)\\n$');

// parseRequestStatement reads a request statement exactly by its grammar.
export function parseRequestStatement(bytes) {
  const b = Buffer.from(bytes);
  if (b.length > MAX_REQUEST_BYTES) refuse('malformed', `the request statement is ${b.length} bytes; at most ${MAX_REQUEST_BYTES}`);
  if (!isASCII(b)) refuse('malformed', 'the request statement is not US-ASCII');
  const m = REQUEST_RE.exec(b.toString('latin1'));
  if (!m) refuse('malformed', 'the request statement does not match the grammar of docs/signing.md');
  const ttlSeconds = Number(m[4]);
  if (ttlSeconds > MAX_TTL_SECONDS) refuse('malformed', `ttl_seconds ${ttlSeconds} is more than ${MAX_TTL_SECONDS}`);
  let seconds;
  try { seconds = parseTimeSec(m[9]); } catch (e) { refuse('malformed', e.message); }
  return {
    origin: m[1], request: m[2], account: m[3], ttlSeconds, drill: m[5] === 'true', solo: m[6] === 'true',
    ticket: Buffer.from(m[7], 'base64').toString('utf8'), justification: Buffer.from(m[8], 'base64').toString('utf8'), time: m[9], seconds,
  };
}

// checkRequestStatement checks a parsed request statement against the
// request as the log records it, in the spec's order; a ttl_seconds of 0
// stands for expect.defaultTTLSeconds.
export function checkRequestStatement(st, expect, nowSeconds) {
  const ttl = st.ttlSeconds === 0 ? expect.defaultTTLSeconds : st.ttlSeconds;
  if (st.origin !== expect.origin) refuse('origin', `the request statement is for log ${JSON.stringify(st.origin)}, not ${JSON.stringify(expect.origin)}`);
  if (st.request !== expect.request) refuse('request', `the request statement is for ${st.request}, not ${expect.request}`);
  if (st.account !== expect.account) refuse('account', `the request statement asks for ${st.account}, not ${expect.account}`);
  if (ttl !== expect.ttlSeconds) refuse('ttl_seconds', `the request statement asks for ${ttl} seconds, not ${expect.ttlSeconds}`);
  if (st.drill !== expect.drill) refuse('drill', `the request statement says drill ${st.drill}`);
  if (st.solo !== expect.solo) refuse('solo', `the request statement says solo ${st.solo}`);
  if (st.ticket !== expect.ticket) refuse('ticket', 'the request statement\'s ticket is not the request\'s');
  if (st.justification !== expect.justification) refuse('justification', 'the request statement\'s justification is not the request\'s');
  const skew = st.seconds - nowSeconds;
  if (skew > MAX_SKEW_SECONDS || skew < -MAX_SKEW_SECONDS) refuse('time', `the request statement's time ${st.time} is ${skew} s from the verifier's clock; at most ${MAX_SKEW_SECONDS} s is allowed`);
}

// verifyRequestStatement is the whole judgement of a request statement:
// parse, signature by the requester's certificate key, then each line.
export function verifyRequestStatement(publicKey, bytes, sig, expect, nowSeconds) {
  const st = parseRequestStatement(bytes);
  verifyStatementSignature(publicKey, bytes, sig);
  checkRequestStatement(st, expect, nowSeconds);
  return st;
}

// ---- policy statements ----

export const POLICY_CONTEXT = 'breakglass policy statement v1';
export const NO_PREVIOUS = 'none';

// policyStatementText builds a policy admin's statement about one change of
// the policy: p.previous is the hash of the policy in force ('' for a
// genesis), p.policy the new policy's hash, p.comment the comment itself.
export function policyStatementText(p) {
  need(p.decision === 'approve' || p.decision === 'deny', `decision ${JSON.stringify(p.decision)} is not approve or deny`);
  need(LOG_ORIGIN.test(p.origin), `origin ${JSON.stringify(p.origin)} is not a log origin`);
  const previous = p.previous === '' ? NO_PREVIOUS : p.previous;
  need(previous === NO_PREVIOUS || HEX64.test(previous), 'previous must be a policy hash (64 lower-case hex) or empty for a genesis');
  need(HEX64.test(p.policy), 'policy must be a policy hash (64 lower-case hex)');
  need(previous !== p.policy, 'previous and policy must differ');
  need(typeof p.comment === 'string', 'comment must be a string');
  const time = typeof p.time === 'string' ? (parseTimeSec(p.time), p.time) : timeSec(p.time);
  const b = Buffer.from(`${POLICY_CONTEXT}\ndecision ${p.decision}\norigin ${p.origin}\nprevious ${previous}\npolicy ${p.policy}\n` +
    `comment ${commentDigest(p.comment)}\ntime ${time}\n`, 'ascii');
  need(b.length <= MAX_STATEMENT_BYTES, 'the statement is over 1024 bytes');
  return b;
}

const POLICY_RE = new RegExp('^' + POLICY_CONTEXT + '\\n' +
  'decision (approve|deny)\\n' +
  'origin ([\\x21-\\x7E]{1,255})\\n' +
  'previous ([0-9a-f]{64}|none)\\n' +
  'policy ([0-9a-f]{64})\\n' +
  'comment (sha256:[0-9a-f]{64})\\n' +
  'time ([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)\\n$');

// parsePolicyStatement reads a policy statement exactly by the grammar.
export function parsePolicyStatement(bytes) {
  const b = Buffer.from(bytes);
  if (b.length > MAX_STATEMENT_BYTES) refuse('malformed', `the statement is ${b.length} bytes; at most ${MAX_STATEMENT_BYTES}`);
  if (!isASCII(b)) refuse('malformed', 'the statement is not US-ASCII');
  const m = POLICY_RE.exec(b.toString('latin1'));
  if (!m) refuse('malformed', 'the policy statement does not match the grammar of docs/signing.md');
  if (m[3] === m[4]) refuse('malformed', 'previous and policy are the same');
  let seconds;
  try { seconds = parseTimeSec(m[6]); } catch (e) { refuse('malformed', e.message); }
  return { decision: m[1], origin: m[2], previous: m[3], policy: m[4], comment: m[5], time: m[6], seconds };
}

// checkPolicyStatement checks a parsed policy statement against the change
// it is presented for, in the spec's order; its time may be five minutes
// ahead of nowSeconds and at most maxAgeSeconds behind it (five minutes
// when smaller: a review over the API).
export function checkPolicyStatement(st, expect, nowSeconds, maxAgeSeconds = 0) {
  const previous = expect.previous === '' ? NO_PREVIOUS : expect.previous;
  if (st.decision !== expect.decision) refuse('decision', `the statement says ${st.decision} but the decision is ${expect.decision}`);
  if (st.origin !== expect.origin) refuse('origin', `the statement is for log ${JSON.stringify(st.origin)}, not ${JSON.stringify(expect.origin)}`);
  if (st.previous !== previous) refuse('previous', `the statement is about a change from ${st.previous}, not from ${previous}`);
  if (st.policy !== expect.policy) refuse('policy', `the statement is about policy ${st.policy}, not ${expect.policy}`);
  if (st.comment !== commentDigest(expect.comment)) refuse('comment', 'the statement\'s comment digest is not the comment\'s');
  const skew = st.seconds - nowSeconds;
  const maxAge = Math.max(maxAgeSeconds, MAX_SKEW_SECONDS);
  if (skew > MAX_SKEW_SECONDS) refuse('time', `the statement's time ${st.time} is ${skew} s ahead of the verifier's clock`);
  if (-skew > maxAge) refuse('time', `the statement's time ${st.time} is ${-skew} s before the verifier's clock; at most ${maxAge} s is allowed`);
}

// verifyPolicyStatement is the whole judgement of one policy statement.
export function verifyPolicyStatement(publicKey, bytes, sig, expect, nowSeconds, maxAgeSeconds = 0) {
  const st = parsePolicyStatement(bytes);
  verifyStatementSignature(publicKey, bytes, sig);
  checkPolicyStatement(st, expect, nowSeconds, maxAgeSeconds);
  return st;
}

// policyBundleLine is one line of a policy.sigs bundle: the statement as
// text, the signature and the signer's DER certificate in base64.
export function policyBundleLine(statement, signature, certificateDER) {
  return JSON.stringify({ statement: Buffer.from(statement).toString('latin1'), signature: Buffer.from(signature).toString('base64'),
    certificate: Buffer.from(certificateDER).toString('base64') }) + '\n';
}

// ---- attestations ----

// accountText is what an attest statement's content digest covers: the
// account and the hash of the policy in force (ListAccounts.policy_hash).
export function accountText(account, policyHash) {
  need(ACCOUNT.test(account), `account ${JSON.stringify(account)} is not an account name`);
  need(HEX64.test(policyHash), `policy hash ${JSON.stringify(policyHash)} is not 64 lower-case hex digits`);
  return Buffer.from(`breakglass account attestation v1\naccount ${account}\npolicy ${policyHash}\n`, 'ascii');
}

// ---- key rotation ----

export const ROTATION_CONTEXT = 'breakglass key rotation v1';

// rotationText builds the text both keys sign when the audit or the
// checkpoint key is rotated. r.key is the new key's DER SPKI.
export function rotationText(r) {
  need(r.purpose === 'audit' || r.purpose === 'checkpoint', `rotation purpose ${JSON.stringify(r.purpose)} is not audit or checkpoint`);
  need(r.account === '' || ACCOUNT.test(r.account), `account ${JSON.stringify(r.account)} is not an account name`);
  need(KID.test(r.old) && KID.test(r.new), 'key ids must be RFC 7638 thumbprints');
  const time = typeof r.time === 'string' ? (parseTimeSec(r.time), r.time) : timeSec(r.time);
  return Buffer.from(`${ROTATION_CONTEXT}\npurpose ${r.purpose}\naccount ${r.account}\nold ${r.old}\nnew ${r.new}\n` +
    `key ${Buffer.from(r.key).toString('base64')}\ntime ${time}\n`, 'ascii');
}

const ROTATION_RE = new RegExp('^' + ROTATION_CONTEXT + '\\n' +
  'purpose (audit|checkpoint)\\n' +
  'account ((?:[a-z0-9][a-z0-9._-]{0,63})?)\\n' +
  'old ([A-Za-z0-9_-]{43})\\n' +
  'new ([A-Za-z0-9_-]{43})\\n' +
  'key ([A-Za-z0-9+/]+={0,2})\\n' +
  'time ([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)\\n$');

// parseRotation reads a rotation text strictly; the key must be canonical
// base64 of a DER SubjectPublicKeyInfo.
export function parseRotation(bytes) {
  const b = Buffer.from(bytes);
  if (!isASCII(b)) refuse('malformed', 'the rotation statement is not US-ASCII');
  const m = ROTATION_RE.exec(b.toString('latin1'));
  if (!m) refuse('malformed', 'the rotation statement does not match the grammar of docs/signing.md');
  const key = Buffer.from(m[5], 'base64');
  if (key.toString('base64') !== m[5]) refuse('malformed', 'the rotation statement\'s key is not canonical base64');
  let publicKey;
  try { publicKey = createPublicKey({ key, format: 'der', type: 'spki' }); } catch (e) { refuse('malformed', `the rotation statement's key does not parse: ${e.message}`); }
  try { parseTimeSec(m[6]); } catch (e) { refuse('malformed', e.message); }
  return { purpose: m[1], account: m[2], old: m[3], new: m[4], key, publicKey, time: m[6] };
}

// verifyBrokerSignature verifies a signature by one of the broker's own keys:
// audit keys are ECDSA P-256 (ASN.1 DER over SHA-256), checkpoint keys
// Ed25519 over the message itself.
export function verifyBrokerSignature(publicKey, msg, sig) {
  const key = keyOf(publicKey);
  if (key.asymmetricKeyType === 'ec') return checkDER(sig) === null && cryptoVerify('sha256', msg, { key, dsaEncoding: 'der' }, sig);
  if (key.asymmetricKeyType === 'ed25519') return sig.length === 64 && cryptoVerify(null, msg, key, sig);
  return false;
}

// thumbprint is a key's RFC 7638 JWK thumbprint (SHA-256, base64url): the
// kid of tokens and the key_id of audit entries.
export async function thumbprint(publicKey) {
  return calculateJwkThumbprint(keyOf(publicKey).export({ format: 'jwk' }), 'sha256');
}

// verifyRotation judges a rotation: its form, that old and new are the
// thumbprints of the old key and of the key in the text, and both
// signatures.
export async function verifyRotation(bytes, oldKey, oldSig, newSig) {
  const r = parseRotation(bytes);
  if (r.old !== await thumbprint(oldKey)) refuse('kid', 'the rotation does not start from the key in force');
  if (r.new !== await thumbprint(r.publicKey)) refuse('kid', 'the new key id is not the thumbprint of the new key');
  if (!verifyBrokerSignature(oldKey, bytes, Buffer.from(oldSig)) || !verifyBrokerSignature(r.publicKey, bytes, Buffer.from(newSig))) {
    refuse('signature', 'the old and the new key must both sign the rotation');
  }
  return r;
}

// ---- audit entries ----

// leafHash is the RFC 6962 leaf hash of an entry's exact bytes.
export const leafHash = (bytes) => sha256(Buffer.concat([Buffer.from([0]), Buffer.from(bytes)]));

export const ZERO_PREV = '0'.repeat(64);

// verifyEntry judges one stored entry: it parses as JSON, its signature by
// the audit key verifies over the exact bytes, and it names prev (the hex
// leaf hash of the entry before it, or 64 zeros) as its predecessor. It
// returns the parsed entry.
export function verifyEntry(bytes, signature, auditKey, prev) {
  let e;
  try { e = JSON.parse(Buffer.from(bytes).toString('utf8')); } catch (err) { refuse('malformed', `the entry is not JSON: ${err.message}`); }
  if (typeof e !== 'object' || e === null || e.v !== 1 || !Number.isSafeInteger(e.index) || typeof e.type !== 'string' || typeof e.prev !== 'string') {
    refuse('malformed', 'the entry lacks v 1, index, type or prev');
  }
  if (!verifyBrokerSignature(auditKey, Buffer.from(bytes), Buffer.from(signature))) refuse('signature', `entry ${e.index}: the audit key's signature does not verify`);
  if (e.prev !== prev) refuse('prev', `entry ${e.index} names ${e.prev} as its predecessor, not ${prev}`);
  return e;
}

// contentOfEntry rebuilds the content fields of a request_created entry:
// id, account and requester from the entry, the rest from its payload,
// created_at parsed (never re-rendered) and content_version (absent: 1).
export function contentOfEntry(e) {
  const p = e.payload;
  const t = parseRFC3339(p.created_at);
  return {
    version: p.content_version ? Number(p.content_version) : 1,
    id: e.request, account: e.account, requester: e.actor,
    ttlSeconds: p.ttl_seconds, drill: Boolean(p.drill), createdAtSeconds: t.seconds, createdAtNanos: t.nanos,
    ticket: p.ticket || '', justification: p.justification || '',
  };
}

// ---- checkpoints ----

// treeHash is the RFC 6962 Merkle tree hash of the leaf hashes, in order.
export function treeHash(leaves) {
  if (leaves.length === 0) return sha256(Buffer.alloc(0));
  if (leaves.length === 1) return Buffer.from(leaves[0]);
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return sha256(Buffer.concat([Buffer.from([1]), treeHash(leaves.slice(0, k)), treeHash(leaves.slice(k))]));
}

// parseVerifierKey reads a C2SP signed-note Ed25519 verifier key,
// name+hash+base64(0x01 || public key), and checks its key hash.
export function parseVerifierKey(vkey) {
  const m = /^([^+\s]+)\+([0-9a-f]{8})\+([A-Za-z0-9+/=]+)$/.exec(vkey);
  need(m, `verifier key ${JSON.stringify(vkey)} is not name+hash+key`);
  const raw = Buffer.from(m[3], 'base64');
  need(raw.length === 33 && raw[0] === 0x01, 'the verifier key is not an Ed25519 key (algorithm byte 0x01 and 32 bytes)');
  const hash = sha256(Buffer.concat([Buffer.from(m[1] + '\n'), raw])).subarray(0, 4);
  need(hash.toString('hex') === m[2], 'the verifier key\'s hash is not its key\'s');
  const publicKey = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.subarray(1).toString('base64url') }, format: 'jwk' });
  return { name: m[1], hash, publicKey };
}

// verifyCheckpoint opens a signed note with one verifier key, checks the
// tlog-checkpoint body's origin, and returns {origin, size, root}. Lines by
// other keys (witness cosignatures) are ignored.
export function verifyCheckpoint(note, vkey, origin) {
  const v = parseVerifierKey(vkey);
  const text = Buffer.from(note).toString('utf8');
  const split = text.lastIndexOf('\n\n');
  if (split < 0) refuse('malformed', 'the note has no blank line before its signatures');
  const body = text.slice(0, split + 1);
  const sigs = text.slice(split + 2);
  if (!sigs.endsWith('\n')) refuse('malformed', 'the note\'s last signature line has no newline');
  let signed = false;
  for (const line of sigs.slice(0, -1).split('\n')) {
    const m = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/.exec(line);
    if (!m) refuse('malformed', `the note's line ${JSON.stringify(line)} is not a signature line`);
    const raw = Buffer.from(m[2], 'base64');
    if (m[1] !== v.name || raw.length !== 68 || !raw.subarray(0, 4).equals(v.hash)) continue;
    if (cryptoVerify(null, Buffer.from(body, 'utf8'), v.publicKey, raw.subarray(4))) signed = true;
  }
  if (!signed) refuse('signature', 'no signature of the note verifies with the checkpoint key');
  const m = /^([^\n]+)\n(0|[1-9][0-9]{0,19})\n([A-Za-z0-9+/]{43}=)\n$/.exec(body);
  if (!m) refuse('malformed', 'the note is not a tlog-checkpoint body');
  if (m[1] !== origin) refuse('origin', `the checkpoint is for ${JSON.stringify(m[1])}, not ${JSON.stringify(origin)}`);
  return { origin: m[1], size: BigInt(m[2]), root: Buffer.from(m[3], 'base64') };
}

// checkTree compares a checkpoint with the leaf hashes of the entries it
// covers.
export function checkTree(cp, leaves) {
  if (cp.size !== BigInt(leaves.length) || !treeHash(leaves).equals(cp.root)) {
    refuse('root', `the checkpoint's root is not the tree of these ${leaves.length} entries`);
  }
}
