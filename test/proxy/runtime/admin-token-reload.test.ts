// The admin token file on a reload. A rotated file takes effect (it is read on each request:
// the old token is refused, the new one taken). A file that became empty or unreadable was not
// looked at by a reload, which was applied ("config reloaded"), and every /admin/ request was
// then refused 401 with a log line blaming a "missing or wrong token". Such a reload is now
// refused as the start refuses one (CONFIG_INVALID naming admin.token.file and the file), the
// running config stays in force, and a request refused for want of a usable token says so,
// naming the file. One process in-process (startProxy) and `breakwater proxy --workers 2` as a
// real process, whose primary checks a reload before any worker sees it.
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/index.js'
import { ConfigInvalidError, startProxy } from '../../../src/proxy/index.js'
import { ensureBuilt, freePort, spawnProxy, waitForReady } from '../e2e/proxy-process.js'
import { captureLog, eventually, http } from './helpers.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-token-reload-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const first = 'first-admin-token-0123456789'
const second = 'second-admin-token-9876543210'

function configText(tokenFile: string, adminPort: number, service: string): string {
  return `services: { ${service}: { endpoints: [http://127.0.0.1:1] } }
listeners: [{ name: out, role: ambassador, port: 0 }]
admin: { port: ${adminPort}, token: { file: ${tokenFile} } }
`
}

async function status(port: number, path: string, token: string, method = 'GET') {
  return (await http(port, path, { method, headers: { authorization: `Bearer ${token}` } })).status
}

/** The text of GET /admin/services (the services in force, by name). */
async function services(port: number, token: string): Promise<string> {
  const response = await http(port, '/admin/services', {
    headers: { authorization: `Bearer ${token}` },
  })
  expect(response.status).toBe(200)
  return response.text
}

describe('the admin token file on a reload', () => {
  it('one process: a rotated file takes effect, an empty or missing one is refused', async () => {
    const token = join(dir, 'single-token')
    const config = join(dir, 'single.yaml')
    writeFileSync(token, `${first}\n`)
    writeFileSync(config, configText(token, 0, 'a'))
    const log = captureLog()
    const proxy = await startProxy({
      config: { file: config },
      logger: createJsonLogger({ output: log }),
      watch: false,
    })
    try {
      const admin = proxy.adminAddress()?.port as number
      expect(await status(admin, '/admin/services', first)).toBe(200)

      writeFileSync(token, `${second}\n`)
      await proxy.reload()
      expect(await status(admin, '/admin/services', first)).toBe(401)
      expect(await status(admin, '/admin/services', second)).toBe(200)

      for (const [what, spoil, rule] of [
        ['empty', () => writeFileSync(token, '\n'), 'empty'],
        ['missing', () => unlinkSync(token), 'no such file'],
      ] as const) {
        spoil()
        // The file also adds a service: a refused reload applies none of it.
        writeFileSync(config, configText(token, 0, `b${what}`))
        const error = await proxy.reload().then(
          () => undefined,
          (e: unknown) => e,
        )
        expect(error, what).toBeInstanceOf(ConfigInvalidError)
        expect((error as ConfigInvalidError).problems).toMatchObject([{ path: 'admin.token.file' }])
        expect((error as Error).message).toContain(`admin.token.file: ${token}: ${rule}`)
        // A request refused meanwhile names the file, not a wrong token.
        expect(await status(admin, '/admin/services', second)).toBe(401)
        expect(log.text()).toContain(
          'admin request refused: the admin token file holds no usable token',
        )
        expect(log.text()).toContain(token)
        writeFileSync(token, `${second}\n`)
        expect(await services(admin, second)).not.toContain(`b${what}`)
      }
      expect(log.text()).toContain('config reload refused; the running config stays in force')
      await proxy.reload()
      expect(await services(admin, second)).toContain('bmissing')
    } finally {
      await proxy.close(0)
    }
  })

  it('breakwater proxy --workers 2: the primary refuses a reload with an empty file', async () => {
    ensureBuilt()
    const token = join(dir, 'cluster-token')
    const config = join(dir, 'cluster.yaml')
    const admin = await freePort()
    writeFileSync(token, `${first}\n`)
    writeFileSync(config, configText(token, admin, 'a'))
    const proxy = spawnProxy(['proxy', '--config', config, '--workers', '2'])
    try {
      await waitForReady(proxy, admin)
      writeFileSync(token, `${second}\n`)
      expect(await status(admin, '/admin/reload', second, 'POST')).toBe(200)
      expect(await status(admin, '/admin/services', first)).toBe(401)

      writeFileSync(token, '  \n')
      writeFileSync(config, configText(token, admin, 'b'))
      proxy.child.kill('SIGHUP')
      await eventually(() => proxy.stdout().includes('config reload refused'), 'the reload refused')
      expect(proxy.stdout()).toContain(`admin.token.file: ${token}: empty`)
      writeFileSync(token, `${second}\n`)
      expect(await services(admin, second)).not.toContain('"b"')
    } finally {
      proxy.child.kill('SIGTERM')
      await proxy.exited
    }
    // Building dist/ first may take a while on a loaded machine.
  }, 180_000)
})
