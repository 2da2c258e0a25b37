// A relying party written as a new user would, with stock libraries and
// nothing but the broker's issuer URL and CA certificate (trusted through
// NODE_EXTRA_CA_CERTS): openid-client finds the issuer by OpenID discovery
// and by RFC 8414, jose verifies tokens against the JWKS discovery names,
// and openid-client introspects tokens (RFC 7662) with the relying party's
// client certificate (RFC 8705 tls_client_auth). The Go end-to-end tests
// (TestNodeRelyingParty) run it and read the JSON it prints; it exits 1 on
// the first failure.
import { readFileSync } from 'node:fs';
import * as client from 'openid-client';
import * as jose from 'jose';
import { Agent, fetch as undiciFetch } from 'undici';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

const results = {};

// verifyWithDiscovery is the whole of a relying party's verification: the
// issuer's discovery document, its JWKS, and jose's checks of signature,
// typ (RFC 9068), iss, aud and exp with the algorithms the issuer lists.
async function verifyWithDiscovery(issuer, token, audience) {
  const config = await client.discovery(new URL(issuer), 'unused', undefined, client.None());
  const meta = config.serverMetadata();
  if (meta.issuer !== issuer) throw new Error(`discovery of ${issuer} named ${meta.issuer}`);
  const jwks = jose.createRemoteJWKSet(new URL(meta.jwks_uri));
  const { payload, protectedHeader } = await jose.jwtVerify(token, jwks, {
    issuer, audience, algorithms: meta.id_token_signing_alg_values_supported, typ: 'at+jwt',
  });
  return { iss: payload.iss, sub: payload.sub, account: payload.bg_account, alg: protectedHeader.alg, algs: meta.id_token_signing_alg_values_supported };
}

// refused runs a verification that must fail and names how it failed.
async function refused(fn) {
  try {
    await fn();
    return 'verified';
  } catch (e) {
    return `refused: ${e.code ?? e.name}`;
  }
}

async function main() {
  const issuer = env('BG_ISSUER');
  const accountIssuer = env('BG_ACCOUNT_ISSUER');

  results.broker = await verifyWithDiscovery(issuer, env('BG_TOKEN'), env('BG_AUDIENCE'));
  results.account = await verifyWithDiscovery(accountIssuer, env('BG_ACCOUNT_TOKEN'), env('BG_ACCOUNT_AUDIENCE'));
  // A token of one issuer never verifies under another: the broker's token
  // under the account's issuer, another account's token under it (with its
  // own audience, so only the issuer and keys can refuse it), and the
  // account's token under the broker's issuer.
  results.brokerTokenUnderAccount = await refused(() => verifyWithDiscovery(accountIssuer, env('BG_TOKEN'), env('BG_AUDIENCE')));
  results.otherAccountTokenUnderAccount = await refused(() => verifyWithDiscovery(accountIssuer, env('BG_OTHER_ACCOUNT_TOKEN'), env('BG_OTHER_ACCOUNT_AUDIENCE')));
  results.accountTokenUnderBroker = await refused(() => verifyWithDiscovery(issuer, env('BG_ACCOUNT_TOKEN'), env('BG_ACCOUNT_AUDIENCE')));

  // RFC 8414 discovery: the metadata at /.well-known/oauth-authorization-server
  // inserted before the issuer's path.
  const oauth = await client.discovery(new URL(issuer), 'unused', undefined, client.None(), { algorithm: 'oauth2' });
  results.rfc8414 = { issuer: oauth.serverMetadata().issuer, introspection: oauth.serverMetadata().introspection_endpoint };

  // Introspection with the relying party's client certificate, at the
  // endpoint discovery names.
  const agent = new Agent({ connect: { ca: readFileSync(env('BG_CA')), cert: readFileSync(env('BG_CLIENT_CERT')), key: readFileSync(env('BG_CLIENT_KEY')) } });
  try {
    const rp = await client.discovery(new URL(issuer), env('BG_CLIENT_ID'), undefined, client.TlsClientAuth());
    rp[client.customFetch] = (url, options) => undiciFetch(url, { ...options, dispatcher: agent });
    const answer = async (token) => {
      const r = await client.tokenIntrospection(rp, token);
      return r.active ? { active: true, iss: r.iss, sub: r.sub, aud: r.aud, bg_account: r.bg_account, bg_drill: r.bg_drill } : { ...r };
    };
    results.introspection = {
      live: await answer(env('BG_TOKEN')),
      account: await answer(env('BG_ACCOUNT_TOKEN')),
      revoked: await answer(env('BG_REVOKED_TOKEN')),
      forged: await answer(env('BG_TOKEN').slice(0, -4) + 'AAAA'),
    };
  } finally {
    await agent.close();
  }
}

main().then(() => {
  console.log(JSON.stringify(results));
}, (e) => {
  console.log(JSON.stringify({ ...results, error: `${e.name}: ${e.message}${e.cause ? ` (${e.cause.message ?? e.cause})` : ''}` }));
  process.exit(1);
});
