// `breakwater proxy --start-timeout <ms>` overrides the file's startTimeoutMs (refused, naming
// the flag, unless a positive integer of milliseconds), and the multi-process primary bounds its
// own admin API start by it: a primary whose admin token source never answers used to hang
// before forking anything, neither up nor failed. With workers, a reload each worker gives up on
// at its own bound is answered by POST /admin/reload with each worker's refusal.

import { closeSync, constants, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { proxyCommand } from '../../../src/cli/proxy.js'
import { spawnCli } from '../../process/cli-process.js'
import { type SilentServer, startSilentServer } from '../../support/silent-server.js'
import { until } from '../../support/until.js'
import { captureLog, http } from './helpers.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-cli-start-timeout-'))
let silent: SilentServer

beforeAll(async () => {
  silent = await startSilentServer()
})
afterAll(async () => {
  await silent.close()
  rmSync(dir, { recursive: true, force: true })
})

function write(name: string, text: string): string {
  const file = join(dir, name)
  writeFileSync(file, text)
  return file
}

describe('--start-timeout', () => {
  it.each([
    ['0', '"0"'],
    // A negative number is a value (only a flag counts as missing), refused for its range.
    ['-5', '"-5"'],
    ['1.5', '"1.5"'],
    ['10s', '"10s"'],
    ['abc', '"abc"'],
    ['2147483648', '"2147483648"'],
  ])('refuses %s, naming the flag, exit 2', async (value, said) => {
    const err = captureLog()
    expect(
      await proxyCommand(['--config', 'x.yaml', '--start-timeout', value], { stderr: err }),
    ).toBe(2)
    expect(err.text()).toContain('--start-timeout')
    expect(err.text()).toContain(said)
    if (said.startsWith('"'))
      expect(err.text()).toContain(
        `--start-timeout must be an integer of milliseconds from 1 to 2147483647, got ${said}`,
      )
  })

  it('is listed in the help', async () => {
    const out = captureLog()
    expect(await proxyCommand(['--help'], { stdout: out })).toBe(0)
    expect(out.text()).toMatch(/--start-timeout <ms>\s+/)
  })

  it("overrides the file's startTimeoutMs: a store that never answers fails the start after it", async () => {
    const file = write(
      'store.yaml',
      `services: { a: { endpoints: [http://127.0.0.1:9] } }
listeners: [{ name: in, role: gateway, port: 0, routes: [{ name: r, match: { prefix: / }, targets: [{ service: a }], idempotency: {} }] }]
idempotency: { url: "postgres://app@127.0.0.1:${silent.port}/app" }
startTimeoutMs: 600000
`,
    )
    const cli = spawnCli(['proxy', '--config', file, '--start-timeout=400'])
    try {
      const { code } = await cli.exited
      expect(code).toBe(1)
      expect(cli.stderr()).toContain(
        'cannot start: startTimeoutMs (400 ms) passed while waiting for idempotency.url',
      )
      // Logged as a JSON line too, once, before the process is ended at once.
      const said = cli
        .stdout()
        .split('\n')
        .filter((l) => l.includes('"level":"error"') && l.includes('cannot start: startTimeoutMs'))
      expect(said).toHaveLength(1)
    } finally {
      cli.kill()
    }
  }, 30_000)
})

describe('the multi-process primary', () => {
  it('fails with PROXY_START_TIMEOUT naming admin when its admin API does not start in time, forking no worker', async () => {
    // A token file that is a pipe: the start's check reads the token the test writes once; the
    // admin API's own read then waits for a writer that never comes (as a read from a hung
    // network mount would).
    const fifo = join(dir, 'admin-token')
    const { execFileSync } = await import('node:child_process')
    execFileSync('mkfifo', [fifo])
    const file = write(
      'primary.yaml',
      `services: { a: { endpoints: [http://127.0.0.1:9] } }
listeners: [{ name: out, role: ambassador, port: 0 }]
admin: { port: 0, token: { file: ${fifo} } }
workers: 2
`,
    )
    // Opens the pipe for writing only while someone reads it (never blocks this process).
    const writeIfRead = (text: string): boolean => {
      try {
        const fd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK)
        if (text !== '') writeFileSync(fd, text)
        closeSync(fd)
        return true
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENXIO') return false
        throw error
      }
    }
    const cli = spawnCli(['proxy', '--config', file, '--start-timeout', '500'])
    try {
      await until(
        () => cli.child.exitCode !== null || writeIfRead('a-long-enough-admin-token\n'),
        'the token check to read',
      )
      await until(
        () => cli.stderr().includes('startTimeoutMs') || cli.child.exitCode !== null,
        `the start to fail${cli.stdout()}${cli.stderr()}`,
        20_000,
      )
      expect(cli.stderr()).toContain(
        'cannot start: startTimeoutMs (500 ms) passed while waiting for admin: starting the admin API on 127.0.0.1:0',
      )
      // The read given up on holds a thread of the process: let it end, so the process can.
      await until(() => writeIfRead(''), 'the admin read to be released')
      const { code } = await cli.exited
      expect(code).toBe(1)
      expect(cli.stdout()).not.toContain('"worker":')
      expect(cli.stdout()).not.toContain('starting workers')
    } finally {
      cli.kill()
    }
  }, 30_000)
})

// The new idempotency store is a TCP port that never answers: each worker refuses the reload at
// its own bound (--start-timeout), and the old config stays everywhere, no worker replaced.
const workersYaml = (url: string): string =>
  `services: { a: { endpoints: [http://127.0.0.1:9] } }
listeners: [{ name: in, role: gateway, port: 0, routes: [{ name: r, match: { prefix: / }, targets: [{ service: a }], idempotency: {} }] }]
idempotency: { url: "${url}" }
admin: { host: 127.0.0.1, port: 0, token: { env: BW_TEST_ADMIN_TOKEN } }
workers: 2
drainTimeoutMs: 1000
`

const token = 'admin-token-0123456789abcdef'

describe('breakwater proxy with workers, POST /admin/reload', () => {
  it("names each worker's refusal at its own start bound", async () => {
    const file = join(dir, 'proxy.yaml')
    writeFileSync(file, workersYaml(`sqlite:${join(dir, 'idempotency.db')}`))
    const cli = spawnCli(['proxy', '--config', file, '--start-timeout', '1500'], {
      BW_TEST_ADMIN_TOKEN: token,
    })
    const started = () => cli.lines.filter((l) => l.msg === 'proxy started')
    try {
      await cli.waitForLine(() => started().length === 2, 'both workers')
      const adminPort = cli.lines.find((l) => l.msg === 'admin api listening')?.port as number
      const pids = started().map((l) => l.pid)
      // The file watch reloads it too; the admin call is queued behind that reload.
      writeFileSync(file, workersYaml(`postgres://app@127.0.0.1:${silent.port}/app`))
      const res = await http(adminPort, '/admin/reload', {
        method: 'POST',
        headers: { authorization: `Bearer ${token}` },
      })
      expect(res.status).toBe(422)
      const body = res.json() as { workers: { pid: number; outcome: string; reason: string }[] }
      expect(body.workers.map((w) => w.pid).sort()).toEqual([...pids].sort())
      for (const worker of body.workers) {
        expect(worker).toMatchObject({ outcome: 'refused', replaced: false })
        expect(worker.reason).toContain(
          '(apply): expected a config that can be applied, got startTimeoutMs (1500 ms) passed while waiting for idempotency.url',
        )
      }
      expect(
        cli.lines.filter((l) => l.msg === 'worker exited unexpectedly; starting a new one'),
      ).toEqual([])
      cli.child.kill('SIGTERM')
      expect(await cli.exited).toEqual({ code: 0, signal: null })
    } finally {
      cli.kill()
    }
  }, 30_000)
})
