// The whole proxy runtime from YAML in front of one upstream, with both listener kinds: an
// ambassador `out` (`/app/...` reaches the service) and a gateway `in` (every path reaches it).
// For end-to-end tests of what one listener kind or the other does with raw bytes.
import type { Logger } from '../../../src/observability/logger.js'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'

/** Starts the proxy for the service `app` at `upstreamUrl`; silent unless given a logger. */
export function startOneServiceProxy(upstreamUrl: string, logger?: Logger): Promise<RunningProxy> {
  return startProxy({
    logger: logger ?? createJsonLogger({ level: 'silent' }),
    config: [
      `services: { app: { endpoints: [${upstreamUrl}] } }`,
      'listeners:',
      '  - { name: out, role: ambassador, port: 0 }',
      '  - { name: in, role: gateway, port: 0, routes: [{ name: all, match: { prefix: / }, targets: [{ service: app }] }] }',
    ].join('\n'),
  })
}
