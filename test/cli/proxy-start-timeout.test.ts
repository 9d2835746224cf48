// `breakwater proxy` whose idempotency store never answers (a port that accepts and stays
// silent, as a database host behind a broken load balancer does): past startTimeoutMs the
// process says what it waited for and exits 1 at once, rather than staying alive on the
// connection it gave up on (pg's own connect timeout would end it only 10 s later; a lock
// wait, never).

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawnCli } from '../process/cli-process.js'
import { type SilentServer, startSilentServer } from '../support/silent-server.js'
import { until } from '../support/until.js'

let silent: SilentServer
const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-start-timeout-'))

beforeAll(async () => {
  silent = await startSilentServer()
})
afterAll(async () => {
  await silent.close()
  rmSync(dir, { recursive: true, force: true })
})

describe('breakwater proxy: a start that hangs on its idempotency store', () => {
  it('fails after startTimeoutMs naming idempotency.url, and the process ends with exit 1', async () => {
    const port = silent.port
    const file = join(dir, 'proxy.yaml')
    writeFileSync(
      file,
      `services: { a: { endpoints: [http://127.0.0.1:9] } }
listeners: [{ name: in, role: gateway, port: 0, routes: [{ name: r, match: { prefix: / }, targets: [{ service: a }], idempotency: {} }] }]
idempotency: { url: "postgres://app@127.0.0.1:${port}/app" }
startTimeoutMs: 500
`,
    )
    const cli = spawnCli(['proxy', '--config', file])
    try {
      await until(() => cli.stderr().includes('startTimeoutMs'), 'the start to fail', 30_000)
      const failedAt = Date.now()
      const { code } = await cli.exited
      expect(code).toBe(1)
      // Well before pg's 10 s connect timeout would have let go of the socket.
      expect(Date.now() - failedAt).toBeLessThan(5_000)
      expect(cli.stderr()).toContain(
        `breakwater proxy: cannot start: startTimeoutMs (500 ms) passed while waiting for idempotency.url: opening postgres://app@127.0.0.1:${port}/app`,
      )
    } finally {
      cli.kill()
    }
  }, 60_000)
})
