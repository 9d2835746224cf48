// GET /admin/config shows the config in force. `admin` and `workers` are read at start only, so
// after a reload that changes them it shows the ones running (the API still listens on the old
// port with the old token) and lists the file's new values under `pendingAtRestart`; `via` and
// `startTimeoutMs` are shown too (found by exploratory testing: the reloaded admin port and
// token were shown as in force, and via / startTimeoutMs were missing).
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type ProxyInternals, startProxyRuntime } from '../../../src/proxy/runtime.js'
import { captureLog, http } from '../runtime/helpers.js'

const token = 'admin-token-0123456789abcdef'
const auth = { authorization: `Bearer ${token}` }
const dir = mkdtempSync(join(tmpdir(), 'bw-admin-config-'))
const file = join(dir, 'proxy.yaml')
let proxy: ProxyInternals
let port: number

function yaml(extra: string): string {
  return `
services:
  a: { endpoints: [http://127.0.0.1:1] }
listeners:
  - { name: out, role: ambassador, port: 0 }
${extra}
`
}

beforeAll(async () => {
  writeFileSync(file, yaml('admin: { port: 0, token: { env: TOKEN } }\nvia: edge-1\n'))
  proxy = await startProxyRuntime({
    config: { file },
    watch: false,
    logger: createJsonLogger({ output: captureLog() }),
    env: { TOKEN: token, OTHER: 'other-token-0123456789abcdef' },
  })
  port = proxy.adminAddress()?.port ?? 0
})

afterAll(async () => {
  await proxy.close(0)
})

describe('GET /admin/config', () => {
  it('shows via and startTimeoutMs, and nothing pending right after the start', async () => {
    const res = await http(port, '/admin/config', { headers: auth })
    expect(res.status).toBe(200)
    const body = res.json() as Record<string, unknown>
    expect(body).toMatchObject({
      via: 'edge-1',
      startTimeoutMs: 60000,
      workers: 1,
      admin: { host: '127.0.0.1', port: 0, token: { env: 'TOKEN' } },
    })
    expect(body).not.toHaveProperty('pendingAtRestart')
  })

  it('after a reload that changes admin and workers, shows the running ones and the new ones as pending', async () => {
    writeFileSync(
      file,
      yaml(
        'admin: { port: 19209, token: { env: OTHER } }\nworkers: 3\nvia: false\nstartTimeoutMs: 5000\n',
      ),
    )
    expect(await http(port, '/admin/reload', { method: 'POST', headers: auth })).toMatchObject({
      status: 200,
    })
    // The API still runs where it started, with the token it started with.
    const res = await http(port, '/admin/config', { headers: auth })
    expect(res.status).toBe(200)
    const body = res.json() as Record<string, unknown>
    expect(body).toMatchObject({
      via: false,
      startTimeoutMs: 5000,
      workers: 1,
      admin: { host: '127.0.0.1', port: 0, token: { env: 'TOKEN' } },
      pendingAtRestart: {
        admin: { host: '127.0.0.1', port: 19209, token: { env: 'OTHER' } },
        workers: 3,
      },
    })
  })

  it('lists nothing pending once the file is back on the running admin settings', async () => {
    writeFileSync(file, yaml('admin: { port: 0, token: { env: TOKEN } }\n'))
    await http(port, '/admin/reload', { method: 'POST', headers: auth })
    const body = (await http(port, '/admin/config', { headers: auth })).json() as Record<
      string,
      unknown
    >
    expect(body).toMatchObject({ via: 'breakwater', workers: 1 })
    expect(body).not.toHaveProperty('pendingAtRestart')
  })
})
