import { EventEmitter } from 'node:events'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { proxyCommand } from '../../../src/cli/proxy.js'
import type { SignalTarget } from '../../../src/process/index.js'
import { runCli, spawnCli } from '../../process/cli-process.js'
import { withTakenPort } from '../../support/loopback.js'
import { createTestCerts } from '../support/certs.js'
import { captureLog, eventually, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-cli-'))
let upstream: NamedUpstream

beforeAll(async () => {
  upstream = await startNamedUpstream('app')
})
afterAll(async () => {
  await upstream.close()
})

function write(name: string, text: string): string {
  const file = join(dir, name)
  writeFileSync(file, text)
  return file
}

describe('proxyCommand', () => {
  it('prints usage errors with exit 2', async () => {
    const err = captureLog()
    expect(await proxyCommand([], { stderr: err })).toBe(2)
    expect(err.text()).toContain('--config <file.yaml> is required')
    expect(await proxyCommand(['--config', 'x', '--workers', '0'], { stderr: err })).toBe(2)
    expect(err.text()).toContain('--workers must be an integer from 1 to 256, got "0"')
    expect(await proxyCommand(['--config', 'x', '--token', 'y'], { stderr: err })).toBe(2)
    expect(err.text()).toContain('unknown option "--token"')
    expect(await proxyCommand(['--config', 'a', '-c', 'b'], { stderr: err })).toBe(2)
    expect(err.text()).toContain('--config given twice')
    expect(await proxyCommand(['--config', 'a', '--check=yes'], { stderr: err })).toBe(2)
    expect(err.text()).toContain('--check takes no value')
    expect(await proxyCommand(['--config', '--check', 'b.yaml'], { stderr: err })).toBe(2)
    expect(err.text()).toContain('--config needs a value')
  })

  it('--check reports every problem and exits 1, or 0 for a valid file', async () => {
    const out = captureLog()
    const err = captureLog()
    const bad = write('bad.yaml', 'services: { a: { endpoints: [nope] } }\nlisteners: []\n')
    expect(await proxyCommand(['--config', bad, '--check'], { stdout: out, stderr: err })).toBe(1)
    expect(err.text()).toContain('services.a.endpoints[0]: expected http:// or https:// URL')
    expect(err.text()).toContain('listeners: expected non-empty list of listeners, got a list of 0')
    const good = write(
      'good.yaml',
      `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n`,
    )
    expect(await proxyCommand(['--config', good, '--check'], { stdout: out, stderr: err })).toBe(0)
    expect(out.text()).toContain('valid (1 service, 1 listener, 1 worker)')
    // Valid in shape, but the certificate, key and token files it names are not there.
    const files = write(
      'files.yaml',
      `services: { a: { endpoints: [${upstream.url}], auth: { bearer: { file: ${dir}/token } } } }\nlisteners: [{ name: in, role: gateway, port: 0, tls: { certFile: ${dir}/cert.pem, keyFile: ${dir} }, routes: [{ name: r, match: { prefix: / }, targets: [{ service: a }] }] }]\n`,
    )
    expect(await proxyCommand(['--config', files, '--check'], { stdout: out, stderr: err })).toBe(1)
    expect(err.text()).toContain('3 files it refers to cannot be used')
    expect(err.text()).toContain(`services.a.auth.bearer.file: ${dir}/token: no such file`)
    expect(err.text()).toContain(`listeners[0].tls.certFile: ${dir}/cert.pem: no such file`)
    expect(err.text()).toContain(`listeners[0].tls.keyFile: ${dir}: not a regular file`)
  })

  it('--check also refuses TLS files that hold no certificate or key, or a key of another certificate', async () => {
    const certs = createTestCerts()
    try {
      const garbage = write('garbage.pem', 'not a certificate\n')
      const out = captureLog()
      const check = async (yaml: string) => {
        const err = captureLog()
        const code = await proxyCommand(['--config', write('tls.yaml', yaml), '--check'], {
          stdout: out,
          stderr: err,
        })
        return { code, text: err.text() }
      }
      const listener = (tls: string) =>
        `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: in, role: gateway, port: 0, tls: ${tls}, routes: [{ name: r, targets: [{ service: a }] }] }]\n`
      // The pair the listener would serve: valid.
      const { server, client, ca } = certs
      expect(
        (
          await check(
            listener(
              `{ certFile: ${server.certFile}, keyFile: ${server.keyFile}, clientCaFile: ${ca.certFile} }`,
            ),
          )
        ).code,
      ).toBe(0)
      const bad = await check(
        listener(
          `{ certFile: ${garbage}, keyFile: ${server.certFile}, clientCaFile: ${server.keyFile} }`,
        ),
      )
      expect(bad.code).toBe(1)
      expect(bad.text).toContain('3 files it refers to cannot be used')
      expect(bad.text).toContain(`listeners[0].tls.certFile: ${garbage}: not a PEM certificate`)
      expect(bad.text).toContain(
        `listeners[0].tls.keyFile: ${server.certFile}: not a PEM private key`,
      )
      expect(bad.text).toContain(
        `listeners[0].tls.clientCaFile: ${server.keyFile}: not a PEM certificate`,
      )
      const mismatch = await check(
        listener(`{ certFile: ${server.certFile}, keyFile: ${client.keyFile} }`),
      )
      expect(mismatch.code).toBe(1)
      expect(mismatch.text).toContain(
        `listeners[0].tls.keyFile: ${client.keyFile}: not the key of the certificate ${server.certFile}`,
      )
      // An upstream's CA (a file without a certificate would fail every request) and client pair.
      const upstreamTls = await check(
        `services: { a: { endpoints: [https://127.0.0.1:1], tls: { caFile: ${garbage}, certFile: ${client.certFile}, keyFile: ${server.keyFile} } } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n`,
      )
      expect(upstreamTls.code).toBe(1)
      expect(upstreamTls.text).toContain(`services.a.tls.caFile: ${garbage}: not a PEM certificate`)
      expect(upstreamTls.text).toContain(
        `services.a.tls.keyFile: ${server.keyFile}: not the key of the certificate ${client.certFile}`,
      )
    } finally {
      certs.cleanup()
    }
  })

  it('--workers counts as the config workers: a memory idempotency store is refused with it', async () => {
    const file = write(
      'memory-store.yaml',
      `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: in, role: gateway, port: 0, routes: [{ name: r, targets: [{ service: a }], idempotency: {} }] }]\n`,
    )
    const out = captureLog()
    const err = captureLog()
    const shared =
      'idempotency.url: expected a shared store (sqlite:<path> or postgres://...) when workers > 1'
    // One process: a memory store is fine.
    expect(await proxyCommand(['--config', file, '--check'], { stdout: out, stderr: err })).toBe(0)
    expect(out.text()).toContain('1 worker)')
    // Two workers would each keep their own records: a key retried on the other worker would
    // run the request again.
    expect(
      await proxyCommand(['--config', file, '--check', '--workers', '2'], {
        stdout: out,
        stderr: err,
      }),
    ).toBe(1)
    expect(err.text()).toContain(shared)
    const started = await runCli(['proxy', '--config', file, '--workers', '2'])
    expect(started.code).toBe(2)
    expect(started.stderr).toContain(shared)
    expect(started.stdout).not.toContain('starting workers')
    const sqlite = write(
      'sqlite-store.yaml',
      `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: in, role: gateway, port: 0, routes: [{ name: r, targets: [{ service: a }], idempotency: {} }] }]\nidempotency: { url: "sqlite:${dir}/idempotency.db" }\n`,
    )
    expect(
      await proxyCommand(['--config', sqlite, '--check', '--workers', '3'], {
        stdout: out,
        stderr: err,
      }),
    ).toBe(0)
    expect(out.text()).toContain('3 workers)')
  })

  it('--workers 1 runs one process on a file with more workers, also through a reload', async () => {
    // The file asks for four workers and keeps idempotency records in memory, which only one
    // process may: --workers 1 is what makes it valid, so the runtime must read the file with it
    // at start and at each reload, not only --check.
    const file = write(
      'four-workers.yaml',
      `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: in, role: gateway, port: 0, routes: [{ name: r, targets: [{ service: a }], idempotency: {} }] }]\nworkers: 4\ndrainTimeoutMs: 1000\n`,
    )
    const signals = new EventEmitter()
    const out = captureLog()
    const err = captureLog()
    const run = proxyCommand(['--config', file, '--workers', '1'], {
      stdout: out,
      stderr: err,
      signals: signals as unknown as SignalTarget,
    })
    await eventually(
      () => out.lines().some((l) => l.msg === 'proxy started') || err.text() !== '',
      'the start',
    )
    expect(err.text()).toBe('')
    signals.emit('SIGHUP', 'SIGHUP')
    await eventually(
      () =>
        out.lines().some((l) => l.msg === 'config reloaded' || l.msg === 'config reload refused'),
      'the SIGHUP reload',
    )
    expect(out.lines().map((l) => l.msg)).toContain('config reloaded')
    signals.emit('SIGTERM', 'SIGTERM')
    expect(await run).toBe(0)
  })

  it('a proxy that cannot start says what failed in one line, exit 1, with one process or workers', async () => {
    await withTakenPort(async (port) => {
      const busy = write(
        'busy.yaml',
        `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: ${port} }]\n`,
      )
      for (const workers of ['1', '2']) {
        const result = await runCli(['proxy', '--config', busy, '--workers', workers])
        expect(result.code).toBe(1)
        // As the proxy's other messages begin (usage errors), not with main's `breakwater:`.
        expect(result.stderr).toMatch(/^breakwater proxy: cannot start: /)
        expect(result.stderr).toContain(`listeners.out: cannot listen on 127.0.0.1:${port}`)
        expect(result.stderr).toContain('EADDRINUSE')
        expect(result.stderr).not.toMatch(/\n\s+at /)
        if (workers === '2')
          expect(result.stderr).toContain('cannot start: a worker exited while starting')
      }
      const store = write(
        'store.yaml',
        `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: in, role: gateway, port: 0, routes: [{ name: r, match: { prefix: / }, targets: [{ service: a }], idempotency: {} }] }]\nidempotency: { url: "sqlite:${dir}" }\n`,
      )
      const result = await runCli(['proxy', '--config', store])
      expect(result.code).toBe(1)
      expect(result.stderr).toContain(
        `breakwater proxy: cannot start: idempotency.url: cannot open sqlite:${dir}`,
      )
      expect(result.stderr).not.toMatch(/\n\s+at /)
    })
  })

  it('a file refused at start is said under the prefix of the command, exit 2', async () => {
    const file = write('invalid-at-start.yaml', 'services: {}\nlisteners: []\n')
    const result = await runCli(['proxy', '--config', file])
    expect(result.code).toBe(2)
    expect(result.stderr).toMatch(/^breakwater proxy: invalid proxy config /)
  })

  it('in one process, an admin port in use is one line naming admin and its address, exit 1', async () => {
    await withTakenPort(async (port) => {
      const file = write(
        'admin-busy-single.yaml',
        `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\nadmin: { port: ${port}, token: { env: BW_TEST_ADMIN_TOKEN } }\n`,
      )
      const result = await runCli(['proxy', '--config', file], {
        BW_TEST_ADMIN_TOKEN: 'a-long-enough-admin-token',
      })
      expect(result.code).toBe(1)
      expect(result.stderr).toContain(`cannot start: admin (127.0.0.1:${port}): `)
      expect(result.stderr).toContain('EADDRINUSE')
      expect(result.stderr).not.toMatch(/\n\s+at /)
    })
  })

  it('with workers, an admin port in use is one line naming admin, exit 1, and no worker is left', async () => {
    await withTakenPort(async (port) => {
      const file = write(
        'admin-busy.yaml',
        `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\nadmin: { port: ${port}, token: { env: BW_TEST_ADMIN_TOKEN } }\n`,
      )
      const cli = spawnCli(['proxy', '--config', file, '--workers', '2'], {
        BW_TEST_ADMIN_TOKEN: 'a-long-enough-admin-token',
      })
      const exited = await Promise.race([
        cli.exited,
        new Promise<undefined>((resolve) => setTimeout(resolve, 20_000, undefined)),
      ])
      // Forked workers that outlive the failed start keep the primary (and the ports) alive.
      for (const pid of cli.stdout().matchAll(/"pid":(\d+),"worker"/g))
        try {
          process.kill(Number(pid[1]), 'SIGKILL')
        } catch {}
      cli.kill()
      expect(exited, `the proxy did not exit${cli.stdout()}${cli.stderr()}`).toBeDefined()
      expect(exited?.code).toBe(1)
      expect(cli.stderr()).toContain(`cannot start: admin: listen EADDRINUSE`)
      expect(cli.stderr()).toContain(`127.0.0.1:${port}`)
      expect(cli.stderr()).not.toMatch(/\n\s+at /)
      expect(cli.stdout()).not.toContain('"worker":')
    })
  })

  it('with workers, SIGTERM while they start stops them at once, exit 0', async () => {
    const file = write(
      'workers-term.yaml',
      `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\ndrainTimeoutMs: 1000\n`,
    )
    const cli = spawnCli(['proxy', '--config', file, '--workers', '2'])
    try {
      await cli.waitForLine((l) => l.msg === 'starting workers', 'the fork')
      const signalled = Date.now()
      cli.child.kill('SIGTERM')
      // A drain request sent before a worker listens for it is lost: the primary used to wait
      // for the drain timeout (plus 10 s) and exit 1.
      expect(await cli.exited).toEqual({ code: 0, signal: null })
      expect(Date.now() - signalled).toBeLessThan(8_000)
      expect(cli.stdout()).not.toContain('"drain":"timeout"')
    } finally {
      cli.kill()
    }
  })

  it('reloads on SIGHUP and drains on SIGTERM with exit 0', async () => {
    const file = write(
      'run.yaml',
      `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\ndrainTimeoutMs: 1000\n`,
    )
    const signals = new EventEmitter()
    const out = captureLog()
    const run = proxyCommand(['--config', file], {
      stdout: out,
      signals: signals as unknown as SignalTarget,
    })
    await eventually(() => out.lines().some((l) => l.msg === 'proxy started'), 'the start')
    const started = out.lines().find((l) => l.msg === 'proxy started') as {
      listeners: { port: number }[]
    }
    const port = started.listeners[0]?.port ?? 0
    expect((await http(port, '/a/x')).json()).toMatchObject({ service: 'app', url: '/x' })
    signals.emit('SIGHUP', 'SIGHUP')
    await eventually(
      () => out.lines().some((l) => l.msg === 'config reloaded'),
      'the SIGHUP reload',
    )
    signals.emit('SIGTERM', 'SIGTERM')
    expect(await run).toBe(0)
    const messages = out.lines().map((l) => l.msg)
    expect(messages).toContain('draining: readiness is now false')
    expect(out.lines().at(-1)).toMatchObject({
      msg: 'proxy exited',
      reason: 'signal',
      drain: 'complete',
    })
    await expect(http(port, '/a/x')).rejects.toThrow()
  })
})
