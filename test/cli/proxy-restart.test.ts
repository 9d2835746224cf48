// `breakwater proxy` with workers: a worker the primary restarts after a crash runs the config
// the primary accepted, not what the file says now. With an invalid file on disk (a reload the
// primary refused), the restarted worker used to read it, fail to start, and be restarted every
// 500 ms for ever; it now starts on the text in force and routes as its sibling does.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawnCli } from '../process/cli-process.js'
import { http, type NamedUpstream, startNamedUpstream } from '../proxy/runtime/helpers.js'

let legacy: NamedUpstream
const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-cli-restart-'))

beforeAll(async () => {
  legacy = await startNamedUpstream('legacy')
})
afterAll(async () => {
  await legacy.close()
  rmSync(dir, { recursive: true, force: true })
})

describe('breakwater proxy with workers, a worker restarted after a crash', () => {
  it('runs the config in force while the file on disk is one the primary refused', async () => {
    const file = join(dir, 'proxy.yaml')
    writeFileSync(
      file,
      `services: { a: { endpoints: [${legacy.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\nworkers: 2\ndrainTimeoutMs: 1000\n`,
    )
    const cli = spawnCli(['proxy', '--config', file])
    const started = () => cli.lines.filter((l) => l.msg === 'proxy started')
    const crashes = () =>
      cli.lines.filter((l) => l.msg === 'worker exited unexpectedly; starting a new one')
    try {
      await cli.waitForLine(() => started().length === 2, 'both workers')
      const port = (started()[0] as { listeners: { port: number }[] }).listeners[0]?.port ?? 0
      writeFileSync(file, 'services: [not, a, map\n')
      await cli.waitForLine(
        (l) => l.msg === 'config reload refused; the running config stays in force',
        'the refused reload',
      )
      process.kill(started()[0]?.pid as number, 'SIGKILL')
      await cli.waitForLine(() => crashes().length === 1, 'the restart')
      // Either the new worker comes up, or it fails and is restarted again.
      await cli.waitForLine(
        () => started().length === 3 || crashes().length > 1,
        'the restarted worker to come up or fail',
      )
      expect(crashes()).toHaveLength(1)
      expect(started()).toHaveLength(3)
      for (let i = 0; i < 4; i++)
        expect((await http(port, '/a/x')).json()).toMatchObject({ service: 'legacy' })
      cli.child.kill('SIGTERM')
      expect(await cli.exited).toEqual({ code: 0, signal: null })
    } finally {
      cli.kill()
    }
  })
})
