// A proxy worker (`--workers N`) that cannot start (a listener port in use) said why on stderr
// and then exited 0: it let go of its IPC channel with process.disconnect(), which node:cluster
// takes for a worker orphaned by its primary and ends at once with exit code 0. The primary
// logged `"code":0` for a worker that failed, as a supervisor watching the workers would see
// it. A worker that fails to start now exits 1, the documented code of a failed start; the
// primary still reports it and exits 1.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { spawnCli } from '../process/cli-process.js'
import { withTakenPort } from '../support/loopback.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-worker-code-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('a proxy worker that cannot start', () => {
  it('exits 1, which the primary reports before it exits 1 itself', async () => {
    await withTakenPort(async (port) => {
      const file = join(dir, 'busy.yaml')
      writeFileSync(
        file,
        `services: { a: { endpoints: [http://127.0.0.1:9] } }\nlisteners: [{ name: out, role: ambassador, port: ${port} }]\n`,
      )
      const cli = spawnCli(['proxy', '--config', file, '--workers', '2'])
      try {
        expect(await cli.exited, cli.stdout() + cli.stderr()).toEqual({ code: 1, signal: null })
        const failed = cli.lines.filter((l) => l.msg === 'a worker failed to start; stopping')
        expect(failed.length, cli.stdout()).toBeGreaterThan(0)
        for (const line of failed)
          expect(line).toEqual(expect.objectContaining({ role: 'primary', code: 1, signal: null }))
        expect(cli.stderr()).toContain('EADDRINUSE')
        expect(cli.stderr()).toContain(
          'breakwater proxy: cannot start: a worker exited while starting',
        )
      } finally {
        cli.kill()
      }
    })
  })
})
