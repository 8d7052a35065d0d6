// xo-server-wasmhooks: forwards Xen Orchestra's events to wasmhooks, and
// makes the calls that its gate hooks guard wait for their verdict, through
// every entry point a plugin can reach: JSON-RPC (lib/jsonrpc.js) and the
// REST API (lib/rest.js).
//
// The module's shape is xo-server's contract. Its `registerPlugin`
// (packages/xo-server/src/index.mjs) imports the module, takes its default
// export, and reads from that `default` (the factory), `configurationSchema`,
// `configurationPresets` and `testSchema`: the shape of a Babel-built
// CommonJS module. Named ES exports are never seen; without the schema there,
// XO shows no settings form and loads the plugin unconfigured.

import { WasmhooksPlugin } from './lib/plugin.js'
import { configurationSchema, testSchema } from './lib/schema.js'

export default {
  default: opts => new WasmhooksPlugin(opts),
  configurationSchema,
  testSchema,
}
