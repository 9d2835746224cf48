// How many problems a refused reload had. A ConfigInvalidError lists the first 50 and a last
// `(more)` entry ('... and N more problems'), and keeps the full count in problemCount: the 422
// answer to POST /admin/reload and the refused-reload log line give that count as a field of its
// own, so a client or a log query reads it without parsing the `(more)` text. In the
// multi-process mode a worker's refusal crosses the IPC channel as its problems and is revived
// by the primary, which reads the count back from the `(more)` entry: it reaches the 422 too.
// Real admin servers on loopback; the primary's workers are in-memory fakes.

import type { Worker } from 'node:cluster'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { type ClusterBackend, createClusterBackend } from '../../../src/proxy/admin/cluster.js'
import type { AdminServer } from '../../../src/proxy/admin/server.js'
import { ConfigInvalidError } from '../../../src/proxy/config/errors.js'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import { type ProxyInternals, startProxyRuntime } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/index.js'
import { captureLog, http } from '../runtime/helpers.js'
import { adminApiOver, settle, twoWorkersYaml } from './cluster-support.js'
import { FakeWorker } from './fake-worker.js'

const token = 'admin-token-0123456789abcdef'
const auth = { authorization: `Bearer ${token}` }
const admin = 'admin: { host: 127.0.0.1, port: 0, token: { env: T } }\n'
const refusedMsg = 'config reload refused; the running config stays in force'

/** `text` with `count` unknown top-level keys: a file with that many problems. */
function withUnknownKeys(text: string, count: number): string {
  return `${text}${Array.from({ length: count }, (_, i) => `unknown${i}: 1\n`).join('')}`
}

function refusal(text: string): ConfigInvalidError {
  try {
    parseProxyConfig(text, 'file')
  } catch (error) {
    if (error instanceof ConfigInvalidError) return error
    throw error
  }
  throw new Error('expected the config to be refused')
}

const post = (port: number) => http(port, '/admin/reload', { method: 'POST', headers: auth })

/** The 422 body's problems and count, as a client reads them. */
function counted(body: Record<string, unknown>): {
  count: unknown
  listed: unknown
  last: unknown
} {
  const problems = body.problems as { path: string; message: string }[]
  return { count: body.problemCount, listed: problems.length, last: problems.at(-1) }
}

const dir = mkdtempSync(join(tmpdir(), 'bw-problem-count-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

let proxy: ProxyInternals | undefined
let server: AdminServer | undefined
afterEach(async () => {
  await proxy?.close(0)
  proxy = undefined
  await server?.close()
  server = undefined
})

describe('a refused reload with more problems than are listed', () => {
  it('gives problemCount in the 422 answer and the log line of one process', async () => {
    const file = join(dir, 'one-process.yaml')
    const valid = `services:
  orders: { endpoints: ['http://127.0.0.1:1'] }
listeners:
  - { name: out, role: ambassador, host: 127.0.0.1, port: 0 }
${admin}`
    writeFileSync(file, valid)
    const log = captureLog()
    proxy = await startProxyRuntime({
      config: { file },
      watch: false,
      env: { T: token },
      clock: new ManualClock(),
      logger: createJsonLogger({ output: log, level: 'debug' }),
    })
    writeFileSync(file, withUnknownKeys(valid, 120))
    const res = await post(proxy.adminAddress()?.port ?? 0)
    expect(res.status).toBe(422)
    expect(counted(res.json())).toEqual({
      count: 120,
      listed: 51,
      last: { path: '(more)', message: '... and 70 more problems' },
    })
    const line = log.lines().find((l) => l.msg === refusedMsg)
    expect(line?.problemCount).toBe(120)
    expect(line?.problems).toHaveLength(51)
    // The file refused: with several proxies on one host the line said nothing of which file.
    expect(line?.file).toBe(file)
    // Each problem as --check prints it, with where it is: the log line gave path and message
    // only, so an operator reading a refused reload had to run --check to find the line.
    expect((line?.problems as string[] | undefined)?.[0]).toBe(
      'unknown0: unknown key (not part of the proxy config) (line 6, column 1)',
    )
  })

  describe('in the multi-process mode', () => {
    function primary(next: () => { config: ReturnType<typeof parseProxyConfig>; text: string }) {
      const inForce = `${twoWorkersYaml}${admin}`
      const log = captureLog()
      const backend = createClusterBackend({
        config: parseProxyConfig(inForce, 'file'),
        configText: inForce,
        loadConfig: async () => next(),
        file: '/etc/breakwater/proxy.yaml',
        logger: createJsonLogger({ output: log, level: 'debug' }),
        metrics: createMetricsRegistry(),
        clock: new ManualClock(0),
        commandTimeoutMs: 60_000,
      })
      return { backend, log, inForce }
    }

    async function adminOver(backend: ClusterBackend): Promise<number> {
      server = await adminApiOver(backend, token)
      return server.address().port
    }

    it('gives problemCount when the primary refuses the file it read', async () => {
      const { backend, log, inForce } = primary(() => {
        throw refusal(withUnknownKeys(inForce, 2_000))
      })
      backend.attach(new FakeWorker(1, { answering: true }) as unknown as Worker)
      const res = await post(await adminOver(backend))
      expect(res.status).toBe(422)
      expect(counted(res.json())).toMatchObject({ count: 2_000, listed: 51 })
      const line = log.lines().find((l) => l.msg === refusedMsg)
      expect(line?.problemCount).toBe(2_000)
      expect(line?.problems).toHaveLength(51)
      expect(line?.file).toBe('/etc/breakwater/proxy.yaml')
      expect((line?.problems as string[] | undefined)?.[0]).toMatch(
        /^unknown0: unknown key \(not part of the proxy config\) \(line \d+, column 1\)$/,
      )
    })

    it("gives a worker's full count once the primary revived its refusal", async () => {
      // The file passes the primary's checks; each worker refuses to apply it with 2,000
      // problems, sent over the channel as serveWorkerCommands sends a ConfigInvalidError.
      const { backend, log } = primary(() => ({
        config: parseProxyConfig(twoWorkersYaml, 'file'),
        text: twoWorkersYaml,
      }))
      const worker = new FakeWorker(1)
      backend.attach(worker as unknown as Worker)
      worker.start()
      const answered = post(await adminOver(backend))
      for (let i = 0; i < 100 && worker.commands().length === 0; i++) await settle()
      const request = worker.sent.findLast(
        (m) => (m as { command?: { op?: string } }).command?.op === 'reload',
      ) as { id: number }
      const refused = refusal(withUnknownKeys(twoWorkersYaml, 2_000))
      worker.emit('message', {
        bw: 'reply',
        id: request.id,
        ok: false,
        error: { code: refused.code, message: refused.message, problems: refused.problems },
      })
      const res = await answered
      expect(res.status).toBe(422)
      expect(counted(res.json())).toEqual({
        count: 2_000,
        listed: 51,
        last: { path: '(more)', message: '... and 1950 more problems' },
      })
      const line = log
        .lines()
        .find((l) => l.msg === 'no worker applied the reload; the running config stays in force')
      expect(line?.file).toBe('/etc/breakwater/proxy.yaml')
    })

    it('names the file on the lines of a reload every worker, or only some, applied', async () => {
      const { backend, log } = primary(() => ({
        config: parseProxyConfig(twoWorkersYaml, 'file'),
        text: twoWorkersYaml,
      }))
      const failing = new FakeWorker(2, {
        answering: true,
        refusing: (command) => (command.op === 'reload' ? 'cannot read tls file' : undefined),
      })
      for (const worker of [new FakeWorker(1, { answering: true }), failing]) {
        backend.attach(worker as unknown as Worker)
        worker.start()
      }
      await expect(backend.reload()).rejects.toThrow()
      const partial = log
        .lines()
        .find((l) => l.msg === 'a reload was applied by only some workers; replacing the others')
      expect(partial?.file).toBe('/etc/breakwater/proxy.yaml')
      failing.exit(0, null)
      backend.detach(failing as unknown as Worker)
      await backend.reload()
      const applied = log.lines().find((l) => l.msg === 'config reloaded in every worker')
      expect(applied?.file).toBe('/etc/breakwater/proxy.yaml')
    })
  })
})
