// `breakwater proxy` that cannot start (a listener's or the admin API's port in use) said so on
// stderr and exited 1, but its log also carried the shutdown of a proxy that never ran:
// "draining: readiness is now false" and "proxy stopped" {"drain":"complete"}, once per worker
// with --workers. What the failed start opened is still closed, without those lines.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { proxyCommand } from '../../src/cli/proxy.js'
import { runCli } from '../process/cli-process.js'
import { captureLog } from '../proxy/runtime/helpers.js'
import { withTakenPort } from '../support/loopback.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-start-failure-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

function messages(stdout: string): unknown[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => (JSON.parse(l) as { msg: unknown }).msg)
}

const shutdownLines = ['draining: readiness is now false', 'proxy stopped']

describe('breakwater proxy that cannot start', () => {
  it.each([['1'], ['2']])(
    'a listener port in use, --workers %s: exit 1, no drain or stop line',
    async (workers) => {
      await withTakenPort(async (port) => {
        const file = join(dir, `listener-${workers}.yaml`)
        writeFileSync(
          file,
          `services: { a: { endpoints: [http://127.0.0.1:9] } }\nlisteners: [{ name: out, role: ambassador, port: ${port} }]\n`,
        )
        const result = await runCli(['proxy', '--config', file, '--workers', workers])
        expect(result.code, result.stdout + result.stderr).toBe(1)
        expect(result.stderr).toContain('EADDRINUSE')
        for (const line of shutdownLines) expect(messages(result.stdout)).not.toContain(line)
      })
    },
  )

  it('the admin port in use (the listeners bound already): exit 1, no drain or stop line', async () => {
    await withTakenPort(async (port) => {
      const file = join(dir, 'admin.yaml')
      writeFileSync(
        file,
        `services: { a: { endpoints: [http://127.0.0.1:9] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\nadmin: { port: ${port}, token: { env: BW_TEST_ADMIN_TOKEN } }\n`,
      )
      const result = await runCli(['proxy', '--config', file], {
        BW_TEST_ADMIN_TOKEN: 'a-long-enough-admin-token',
      })
      expect(result.code, result.stdout + result.stderr).toBe(1)
      expect(result.stderr).toContain('EADDRINUSE')
      for (const line of shutdownLines) expect(messages(result.stdout)).not.toContain(line)
    })
  })
})

// The relay and the saga worker log a failed start as a JSON error line too (log collectors
// read stdout, not stderr); a single-process proxy wrote only its stderr line.
describe('breakwater proxy that cannot start, in one process', () => {
  it('logs the stderr line as a JSON error line too', async () => {
    await withTakenPort(async (port) => {
      const file = join(dir, 'json-line.yaml')
      writeFileSync(
        file,
        `services: { a: { endpoints: [http://127.0.0.1:9] } }\nlisteners: [{ name: out, role: ambassador, port: ${port} }]\n`,
      )
      const out = captureLog()
      const err = captureLog()
      expect(await proxyCommand(['--config', file], { stdout: out, stderr: err })).toBe(1)
      const said = err
        .text()
        .replace(/^breakwater proxy: /, '')
        .trimEnd()
      expect(said).toMatch(/^cannot start: listeners\.out: .*EADDRINUSE/)
      expect(out.lines().at(-1)).toMatchObject({ level: 'error', component: 'proxy', msg: said })
    })
  })
})
