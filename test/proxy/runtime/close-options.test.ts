// close(drainMs) with a bad drainMs is refused before anything stops, so the proxy keeps
// serving and a proper close() afterwards still stops it.
import { afterEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { startProxyRuntime } from '../../../src/proxy/runtime.js'
import { captureLog, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

let upstream: NamedUpstream | undefined

afterEach(async () => {
  await upstream?.close()
})

describe('proxy.close(drainMs)', () => {
  it.each([-1, 1.5, Number.NaN, '10' as unknown as number])(
    'refuses drainMs %s with INVALID_OPTION and stays usable',
    async (drainMs) => {
      upstream = await startNamedUpstream('a')
      const proxy = await startProxyRuntime({
        config: `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n`,
        logger: createJsonLogger({ output: captureLog() }),
      })
      const port = proxy.address('out').port
      await expect(proxy.close(drainMs)).rejects.toMatchObject({ code: 'INVALID_OPTION' })
      expect(proxy.ready()).toBe(true)
      expect((await http(port, '/a/x')).status).toBe(200)
      await proxy.close(0)
      expect(proxy.ready()).toBe(false)
      await expect(http(port, '/a/x')).rejects.toThrow()
    },
  )
})
