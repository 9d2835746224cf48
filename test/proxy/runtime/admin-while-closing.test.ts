// The admin API outlives the listeners' drain (it closes last), so a reload asked through it
// while the proxy stops reaches a closed runtime: it is answered 503 PROXY_CLOSED (nothing was
// applied), not 500 with an "admin request failed" error in the log.
import { afterEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { startProxyRuntime } from '../../../src/proxy/runtime.js'
import { captureLog, eventually, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

const adminToken = 'admin-token-0123456789abcdef'
let upstream: NamedUpstream | undefined

afterEach(async () => {
  upstream?.release()
  await upstream?.close()
})

describe('admin reload while the proxy closes', () => {
  it('answers 503 PROXY_CLOSED', async () => {
    upstream = await startNamedUpstream('held', { hold: () => true })
    const log = captureLog()
    const proxy = await startProxyRuntime({
      config: `services: { a: { endpoints: [${upstream.url}] } }
listeners: [{ name: out, role: ambassador, port: 0 }]
admin: { port: 0, token: { env: TOKEN } }
drainTimeoutMs: 60000
`,
      logger: createJsonLogger({ output: log }),
      env: { TOKEN: adminToken },
    })
    const admin = proxy.adminAddress()?.port ?? 0
    // A request in flight keeps the drain, and so the admin API, going.
    const inFlight = http(proxy.address('out').port, '/a/x')
    await eventually(() => (upstream?.seen.length ?? 0) === 1, 'the request to reach upstream')
    const closed = proxy.close()
    const res = await http(admin, '/admin/reload', {
      method: 'POST',
      headers: { authorization: `Bearer ${adminToken}` },
    })
    expect(res.status).toBe(503)
    expect(res.json()).toMatchObject({ code: 'PROXY_CLOSED' })
    expect(log.lines().filter((l) => l.msg === 'admin request failed')).toEqual([])
    upstream.release()
    expect((await inFlight).status).toBe(200)
    await closed
  })
})
