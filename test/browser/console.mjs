// The approver console in a real browser: Debian's Chromium driven by
// playwright-core, with the approvers' client certificates (Playwright's
// clientCertificates) and passkeys made by a CDP virtual authenticator
// (CTAP2, internal transport, user verification). Run by TestConsoleInChromium,
// which passes everything in BG_TEST (JSON) and checks the broker's side
// afterwards. Every check that fails throws: the exit status is the verdict.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.env.BG_TEST);
const log = (step, detail) => console.log(JSON.stringify({ step, ...detail }));

function check(ok, what) {
  if (!ok) throw new Error('check failed: ' + what);
}

// bgctl runs the real CLI as one of the identities; it returns its exit
// status and output instead of throwing.
function bgctl(who, ...args) {
  try {
    const out = execFileSync(cfg.bgctl, args, { env: { ...process.env, ...cfg.bgctlEnv[who] }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return { code: 0, out, err: '' };
  } catch (e) {
    return { code: e.status ?? 1, out: String(e.stdout ?? ''), err: String(e.stderr ?? '') };
  }
}

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

// as opens a browser profile that presents who's client certificate to the
// console, on its own origin and on the second one (the same server by IP).
async function as(who) {
  const id = cfg.ids[who];
  const ctx = await browser.newContext({
    viewport: { width: 1280, height: 860 },
    clientCertificates: [cfg.console, cfg.consoleIP].map((origin) => ({ origin, certPath: id.cert, keyPath: id.key })),
  });
  const page = await ctx.newPage();
  page.setDefaultTimeout(20000);
  return { ctx, page };
}

async function authenticator(ctx, page) {
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: { protocol: 'ctap2', transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true },
  });
  return { cdp, id: authenticatorId };
}

async function shot(page, name) {
  const path = join(cfg.screenshots, name);
  await page.screenshot({ path, fullPage: true });
  log('screenshot', { path });
}

// createPasskey creates a passkey on the passkeys page and returns the
// one-time code the console shows.
async function createPasskey(page, label) {
  await page.goto(cfg.console + '/passkeys');
  await page.fill('#passkey-label', label);
  await page.click('#create-passkey');
  await page.waitForSelector('#passkey-result:not([hidden]), #passkey-error:not([hidden])');
  const err = await page.textContent('#passkey-error');
  check(!(await page.isVisible('#passkey-error')), 'the passkey was created: ' + err);
  const cmd = (await page.textContent('#passkey-command')).trim();
  check(/^bgctl passkey confirm [0-9A-Z]{5}-[0-9A-Z]{5}$/.test(cmd), 'the console shows the confirm command: ' + cmd);
  return cmd.split(' ').pop();
}

// approve clicks a review button on a request page and returns what the
// page says happened.
async function approve(page, id, comment) {
  await page.goto(cfg.console + '/requests/' + id);
  await page.fill('#comment', comment);
  await page.click('#approve');
  await page.waitForFunction(() => document.getElementById('review-result').textContent !== '');
  return page.textContent('#review-result');
}

try {
  // No client certificate: the console does not load. (This browser is
  // told to accept the server whatever its certificate, so that the only
  // reason left is the missing client certificate.)
  {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await ctx.newPage();
    let loaded = true;
    try {
      await page.goto(cfg.console + '/', { timeout: 15000 });
    } catch (e) {
      loaded = false;
      log('no-client-certificate', { refused: e.message.split('\n')[0] });
    }
    check(!loaded, 'the console loaded without a client certificate');
    await ctx.close();
  }

  const bob = await as('bob');
  const a1 = await authenticator(bob.ctx, bob.page);

  // Awaiting my review, updated live: a request made while the page is
  // open appears without a reload.
  await bob.page.goto(cfg.console + '/');
  check((await bob.page.textContent('#awaiting')).includes(cfg.request), 'the pending request is listed');
  check((await bob.page.textContent('#awaiting')).includes('needs 1 of db-admins and 1 of security'), 'the quorum progress is in words');
  await bob.page.waitForFunction(() => document.getElementById('live').textContent === 'live');
  const made = bgctl('alice', 'request', '--account', 'prod-db', '--justification', 'replica lagging, INC-4712', '--ticket', 'INC-4712', '--ttl', '15m', '-o', 'json');
  check(made.code === 0, 'alice makes a second request: ' + made.err);
  const liveID = JSON.parse(made.out).request.id;
  await bob.page.waitForSelector(`tr[data-request="${liveID}"]`);
  log('live-update', { request: liveID });
  await shot(bob.page, 'awaiting.png');

  // Enrollment: bob creates a passkey; erin cannot bind it; bob does.
  const code = await createPasskey(bob.page, "bob's laptop");
  await shot(bob.page, 'passkeys.png');
  const stolen = bgctl('erin', 'passkey', 'confirm', code, '--yes');
  check(stolen.code !== 0 && stolen.err.includes('only bob can bind it'), 'erin binding bob\'s passkey is refused: ' + stolen.err);
  log('binding-by-someone-else', { refused: stolen.err.trim() });
  const bound = bgctl('bob', 'passkey', 'confirm', code, '--yes');
  check(bound.code === 0 && bound.out.includes('bound to bob'), 'bob binds his passkey: ' + bound.err);

  // bob approves with the passkey; the request asks for the review the
  // browser signs, which we keep to replay.
  let posted = null;
  bob.page.on('request', (r) => {
    if (r.method() === 'POST' && r.url().endsWith('/review')) posted = { url: r.url(), body: r.postData() };
  });
  const result = await approve(bob.page, cfg.request, 'confirmed on the incident bridge');
  check(result.startsWith('approve recorded'), 'bob approves with his passkey: ' + result);
  log('passkey-approval', { result });
  check(posted !== null, 'the approval was posted');

  // A replayed assertion: the same review again, and moved to another
  // request.
  const replay = async (url) => bob.page.evaluate(async ({ url, body }) => {
    const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json', 'Accept': 'application/json', 'X-CSRF-Token': document.body.dataset.csrf }, body });
    return { status: res.status, body: await res.json() };
  }, { url, body: posted.body });
  const again = await replay(posted.url);
  check(again.status === 409, 'the same assertion again is refused: ' + JSON.stringify(again));
  const moved = await replay(cfg.console + '/requests/' + cfg.request2 + '/review');
  check(moved.status === 400 && /request/.test(moved.body.error), 'the assertion moved to another request is refused: ' + JSON.stringify(moved));
  log('replayed-assertion', { again: again.body.error, moved: moved.body.error });

  // An assertion without user verification: the page's own code signs,
  // with the authenticator no longer verifying the user and the request
  // for verification dropped on the way.
  await a1.cdp.send('WebAuthn.setUserVerified', { authenticatorId: a1.id, isUserVerified: false });
  await bob.page.goto(cfg.console + '/requests/' + cfg.request2);
  await bob.page.evaluate(() => {
    const get = navigator.credentials.get.bind(navigator.credentials);
    navigator.credentials.get = (o) => { o.publicKey.userVerification = 'discouraged'; return get(o); };
  });
  await bob.page.fill('#comment', 'no PIN');
  await bob.page.click('#approve');
  await bob.page.waitForFunction(() => document.getElementById('review-result').textContent !== '');
  const noUV = await bob.page.textContent('#review-result');
  check(noUV.startsWith('Not recorded') && noUV.includes('User verification required'), 'an assertion without user verification is refused: ' + noUV);
  log('no-user-verification', { refused: noUV });
  await a1.cdp.send('WebAuthn.setUserVerified', { authenticatorId: a1.id, isUserVerified: true });

  // A wrong origin: the same server by IP is another origin; the browser
  // will not use a localhost passkey there, and the console refuses state
  // changes from it.
  await bob.page.goto(cfg.consoleIP + '/requests/' + cfg.request2);
  await bob.page.fill('#comment', 'from another origin');
  await bob.page.click('#approve');
  await bob.page.waitForFunction(() => document.getElementById('review-result').textContent !== '');
  const wrongOrigin = await bob.page.textContent('#review-result');
  check(wrongOrigin.startsWith('Not recorded'), 'an approval from another origin is refused: ' + wrongOrigin);
  await bob.page.goto(cfg.consoleIP + '/passkeys');
  await bob.page.click('#create-passkey');
  await bob.page.waitForSelector('#passkey-error:not([hidden])');
  const wrongOriginCreate = await bob.page.textContent('#passkey-error');
  check(wrongOriginCreate.includes("did not come from the console's own pages"), 'a passkey created from another origin is refused: ' + wrongOriginCreate);
  log('wrong-origin', { approval: wrongOrigin, creation: wrongOriginCreate });

  // A passkey not bound: a second authenticator's passkey, created but
  // never confirmed, signs an approval the broker refuses.
  await a1.cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: a1.id });
  const a2 = await authenticator(bob.ctx, bob.page);
  await createPasskey(bob.page, 'spare key, never bound');
  await bob.page.goto(cfg.console + '/passkeys');
  const spare = await bob.page.getAttribute('tr[data-state="pending"]', 'data-credential');
  await bob.page.goto(cfg.console + '/requests/' + cfg.request2);
  await bob.page.evaluate((id) => { document.getElementById('content').dataset.credentials = id; }, spare);
  await bob.page.fill('#comment', 'unbound');
  await bob.page.click('#approve');
  await bob.page.waitForFunction(() => document.getElementById('review-result').textContent !== '');
  const unbound = await bob.page.textContent('#review-result');
  check(unbound.includes('not bound to you'), 'an approval by a passkey never bound is refused: ' + unbound);
  log('passkey-not-bound', { refused: unbound });
  await a2.cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: a2.id });

  // erin approves with bgctl and her key on a PKCS#11 token: approved.
  const erin = bgctl('erin', 'approve', cfg.request, '--yes', '--comment', 'approved with my smart card');
  check(erin.code === 0 && erin.out.includes('APPROVED'), 'erin approves with her hardware key: ' + erin.err + erin.out);
  await bob.page.goto(cfg.console + '/requests/' + cfg.request);
  const page = await bob.page.textContent('main');
  check(page.includes('APPROVED') && page.includes('passkey ') && page.includes('PKCS#11'), 'the request page says who signed with what');
  await shot(bob.page, 'request.png');

  // CSRF from another origin, and the console in a frame, as alice.
  const alice = await as('alice');
  // alice asks for access in the console: her passkey, bound with bgctl,
  // signs the request statement the page builds from the form.
  await authenticator(alice.ctx, alice.page);
  const aliceCode = await createPasskey(alice.page, "alice's laptop");
  const aliceBound = bgctl('alice', 'passkey', 'confirm', aliceCode, '--yes');
  check(aliceBound.code === 0, 'alice binds her passkey: ' + aliceBound.err);
  await alice.page.goto(cfg.console + '/mine');
  await alice.page.selectOption('#account', 'prod-db');
  await alice.page.fill('#justification', 'ledger replica stuck, INC-4713');
  await alice.page.fill('#ticket', 'INC-4713');
  await alice.page.fill('#ttl', '20');
  await alice.page.click('#create-form button[type="submit"]');
  await alice.page.waitForURL(/\/requests\/[0-9a-f-]{36}$/);
  const made2 = await alice.page.textContent('main');
  check(made2.includes('PENDING') && made2.includes('ledger replica stuck, INC-4713') && made2.includes('20m0s'), 'alice\'s console request is pending as asked');
  log('console-request', { url: alice.page.url() });
  await alice.page.goto(cfg.console + '/mine');
  await shot(alice.page, 'mine.png');
  await alice.page.goto(cfg.attacker + '/csrf.html');
  await alice.page.waitForURL(/\/cancel$/);
  const csrf = await alice.page.textContent('body');
  check(csrf.includes("did not come from the console's own pages"), 'a cross-origin form post is refused: ' + csrf);
  await alice.page.goto(cfg.console + '/requests/' + cfg.request2);
  check((await alice.page.textContent('main')).includes('PENDING'), 'the request the forged form tried to cancel is still pending');
  log('csrf', { refused: csrf.trim().split('\n').slice(0, 2).join(' ') });
  const framed = await alice.page.goto(cfg.attacker + '/frame.html');
  check(framed.ok(), 'the framing page loads');
  await alice.page.waitForFunction(() => window.frameLoaded === true);
  let shown = false;
  for (const f of alice.page.frames()) {
    if (f === alice.page.mainFrame()) continue;
    const text = await f.evaluate(() => document.body ? document.body.innerText : '').catch(() => '');
    if (text.includes('Awaiting my review')) shown = true;
    log('frame', { url: f.url() });
  }
  check(!shown, 'the console renders inside another site\'s frame');
  log('framing', { refused: true });

  // The auditor's page.
  const dave = await as('dave');
  await dave.page.goto(cfg.console + '/audit');
  check((await dave.page.textContent('main')).includes('passkey_bound'), 'the audit page shows the binding');
  await shot(dave.page, 'audit.png');

  log('done', { ok: true });
} finally {
  await browser.close();
}
