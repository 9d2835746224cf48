// The whole proxy runtime from YAML in front of one upstream, with both listener kinds: an
// ambassador `out` (`/app/...` reaches the service) and a gateway `in` (every path reaches it).
// For end-to-end tests of what one listener kind or the other does with raw bytes.
import { afterAll, beforeAll } from 'vitest'
import type { Logger } from '../../../src/observability/logger.js'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { type CountingUpstream, startCountingUpstream } from './counting-upstream.js'

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

/** What {@link useOneServiceProxy} gives a test file. */
export interface OneServiceProxyFixture {
  /** The upstream behind the proxy, which records what reaches it. */
  readonly upstream: () => CountingUpstream
  /** The running proxy. */
  readonly proxy: () => RunningProxy
  /** What the proxy logged so far (JSON lines). */
  readonly logged: () => string
}

/**
 * Starts a counting upstream and {@link startOneServiceProxy} in front of it, logging into a
 * string, before the file's tests, and closes both after them.
 */
export function useOneServiceProxy(): OneServiceProxyFixture {
  let upstream: CountingUpstream | undefined
  let proxy: RunningProxy | undefined
  let logged = ''
  beforeAll(async () => {
    upstream = await startCountingUpstream()
    const output = {
      write: (text: string) => {
        logged += text
      },
    }
    proxy = await startOneServiceProxy(upstream.url, createJsonLogger({ output }))
  })
  afterAll(async () => {
    await proxy?.close(0)
    await upstream?.close()
  })
  return {
    upstream: () => upstream as CountingUpstream,
    proxy: () => proxy as RunningProxy,
    logged: () => logged,
  }
}
