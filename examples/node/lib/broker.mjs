// The broker's gRPC API, loaded at run time from the published proto files
// (proto/ and the protovalidate options they import) with
// @grpc/proto-loader, over mTLS with @grpc/grpc-js. Nothing here is
// generated or copied from the Go code.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

// Fields keep their proto names (create_time, content_digest), 64-bit
// integers come as strings (no precision lost), enums as their names, and
// absent scalars as their defaults, as proto3 defines them.
const definition = protoLoader.loadSync(
  ['requests', 'reviews', 'tokens', 'accounts', 'audit', 'governance'].map((f) => `breakglass/v1/${f}.proto`),
  { includeDirs: [path.join(root, 'proto'), path.join(root, 'third_party/protovalidate')], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
);
const v1 = grpc.loadPackageDefinition(definition).breakglass.v1;

const SERVICES = ['RequestService', 'ReviewService', 'TokenService', 'AccountService', 'AuditService', 'GovernanceService'];

// BrokerError is a gRPC status from the broker, with its code's name.
export class BrokerError extends Error {
  constructor(method, err) {
    super(`${method}: ${grpc.status[err.code] ?? err.code}: ${err.details || err.message}`);
    this.name = 'BrokerError';
    this.code = grpc.status[err.code] ?? String(err.code);
    this.details = err.details || err.message;
  }
}

// connect dials the broker as the holder of one client certificate and
// returns an object with one async method per RPC, named Service.Method
// (await b.RequestService.CreateRequest({...})), plus close().
export function connect({ addr, ca, cert, key }) {
  const creds = grpc.credentials.createSsl(readFileSync(ca), readFileSync(key), readFileSync(cert));
  const clients = [];
  const api = { close: () => clients.forEach((c) => c.close()) };
  for (const name of SERVICES) {
    const client = new v1[name](addr, creds);
    clients.push(client);
    const methods = {};
    for (const [method, def] of Object.entries(v1[name].service)) {
      if (def.responseStream) {
        methods[method] = (req) => client[method](req, { deadline: Date.now() + 30000 });
        continue;
      }
      methods[method] = (req = {}) => new Promise((resolve, reject) => {
        client[method](req, { deadline: Date.now() + 30000 }, (err, res) => (err ? reject(new BrokerError(`${name}.${method}`, err)) : resolve(res)));
      });
    }
    api[name] = methods;
  }
  return api;
}
