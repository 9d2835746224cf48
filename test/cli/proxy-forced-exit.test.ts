// `breakwater proxy` (one process) asked twice to stop while a request is stuck on an upstream
// that never answers: the second signal gives up on the drain, and the process must end with
// exit 1 then, not stay alive on the sockets the unfinished drain still holds.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, request, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawnCli } from '../process/cli-process.js'
import { until } from '../support/until.js'

let upstream: Server
let arrived = 0
const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-forced-'))

beforeAll(async () => {
  // Takes requests and never answers them.
  upstream = createServer(() => {
    arrived++
  })
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve))
})
afterAll(async () => {
  upstream.closeAllConnections()
  await new Promise((resolve) => upstream.close(resolve))
  rmSync(dir, { recursive: true, force: true })
})

describe('breakwater proxy: a second signal during a drain that waits on a stuck request', () => {
  it('ends the process with exit 1', async () => {
    const port = (upstream.address() as AddressInfo).port
    const file = join(dir, 'proxy.yaml')
    writeFileSync(
      file,
      `services: { a: { endpoints: [http://127.0.0.1:${port}], timeouts: { readMs: 600000, overallMs: 600000 } } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\ndrainTimeoutMs: 600000\n`,
    )
    const cli = spawnCli(['proxy', '--config', file])
    try {
      const started = await cli.waitForLine((l) => l.msg === 'proxy started', 'the start', 30_000)
      const listen = (started as { listeners: { port: number }[] }).listeners[0]!.port
      const client = request({ host: '127.0.0.1', port: listen, path: '/a/x' })
      client.on('error', () => {})
      client.end()
      await until(() => arrived === 1, 'the request to reach the upstream')
      cli.child.kill('SIGTERM')
      await cli.waitForLine((l) => l.msg === 'SIGTERM: draining', 'the drain')
      cli.child.kill('SIGTERM')
      await cli.waitForLine((l) => l.msg === 'proxy exited', 'the forced end')
      expect(await cli.exited).toEqual({ code: 1, signal: null })
      client.destroy()
    } finally {
      cli.kill()
    }
  }, 60_000)
})
