// A reload asked of a proxy that was closed (or that is closed while the reload waits its turn)
// applies nothing, and says so: it rejects with code PROXY_CLOSED instead of resolving as if the
// config had been applied.
import { afterEach, describe, expect, it } from 'vitest'
import { BreakwaterError } from '../../../src/core/errors.js'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { startProxyRuntime } from '../../../src/proxy/runtime.js'
import { captureLog, type NamedUpstream, startNamedUpstream } from './helpers.js'

let upstream: NamedUpstream | undefined

afterEach(async () => {
  await upstream?.close()
})

const yaml = (url: string): string =>
  `services: { a: { endpoints: [${url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n`

describe('reload of a closed proxy', () => {
  it('rejects with PROXY_CLOSED after close()', async () => {
    upstream = await startNamedUpstream('a')
    const proxy = await startProxyRuntime({
      config: yaml(upstream.url),
      logger: createJsonLogger({ output: captureLog() }),
    })
    await proxy.close(0)
    const error = await proxy.reload(yaml(upstream.url)).catch((e: unknown) => e)
    expect(BreakwaterError.is(error)).toBe(true)
    expect((error as BreakwaterError).code).toBe('PROXY_CLOSED')
    await expect(proxy.tryReload()).rejects.toMatchObject({ code: 'PROXY_CLOSED' })
  })

  it('rejects with PROXY_CLOSED when close() came while the reload waited its turn', async () => {
    upstream = await startNamedUpstream('a')
    const proxy = await startProxyRuntime({
      config: yaml(upstream.url),
      logger: createJsonLogger({ output: captureLog() }),
    })
    // The first may run before close() or find the proxy closed too; the second surely does.
    const first = proxy.reload(yaml(upstream.url)).catch(() => {})
    const second = proxy.reload(yaml(upstream.url)).catch((e: unknown) => e)
    const closed = proxy.close(0)
    await first
    expect(await second).toMatchObject({ code: 'PROXY_CLOSED' })
    await closed
  })
})
