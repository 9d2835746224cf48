// The proxy's YAML config: schema (zod 4), loader with path-naming errors, cross-field checks,
// and the JSON Schema for editors.

export type { ConfigProblem, ProxyStartErrorCode } from './errors.js'
export { ConfigInvalidError, formatProblem, ProxyClosedError, ProxyStartError } from './errors.js'
export { proxyConfigJsonSchema } from './json-schema.js'
export type { ProxyConfigOverrides } from './load.js'
export { loadProxyConfig, parseProxyConfig, validateProxyDocument } from './load.js'
export type { ProxyConfigDocument, ProxyConfigInput } from './schema.js'
export { proxyConfigSchema, toProxyConfig } from './schema.js'
