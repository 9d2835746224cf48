// The upstream side of the proxy: services with discovery, pools, load balancing, ejection,
// TLS origination, outbound credentials and the forward path's policies.

export type { DnsResolver } from './discovery.js'
export { parseEndpointFile, parseEndpointUrl } from './discovery.js'
export type {
  ServiceRuntimeOptions,
  UpstreamService,
} from './service-runtime.js'
export { createServiceRuntime, UpstreamError } from './service-runtime.js'
