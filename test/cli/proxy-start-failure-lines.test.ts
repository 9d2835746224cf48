// `breakwater proxy` that cannot start (a listener's or the admin API's port in use) said so on
// stderr and exited 1, but its log also carried the shutdown of a proxy that never ran:
// "draining: readiness is now false" and "proxy stopped" {"drain":"complete"}, once per worker
// with --workers. What the failed start opened is still closed, without those lines.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { runCli } from '../process/cli-process.js'
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
