// sagaWorkerCommand in-process: a bad --db names where the URL came from.
import { EventEmitter } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { sagaWorkerCommand } from '../../src/cli/saga-worker.js'
import { until } from '../support/until.js'

async function run(args: string[], env: Record<string, string>) {
  let stderr = ''
  const code = await sagaWorkerCommand(args, {
    stdout: { write: () => {} },
    stderr: { write: (t: string) => (stderr += t) },
    env,
    signals: new EventEmitter(),
  })
  return { code, stderr }
}

describe('breakwater saga worker: the database URL', () => {
  it('a bad BREAKWATER_DB_URL is named as such, a bad --db as --db', async () => {
    const fromEnv = await run(['--module', 'x.js'], {
      BREAKWATER_DB_URL: 'mysql://u:hunter2-pw@db/app',
    })
    expect(fromEnv.code).toBe(2)
    expect(fromEnv.stderr).toContain(
      'breakwater saga worker: BREAKWATER_DB_URL: expected sqlite:<file> or postgres://',
    )
    expect(fromEnv.stderr).not.toContain('hunter2')
    const fromFlag = await run(['--module', 'x.js', '--db', 'mysql://db/app'], {
      BREAKWATER_DB_URL: 'sqlite:./fine.db',
    })
    expect(fromFlag.code).toBe(2)
    expect(fromFlag.stderr).toContain('breakwater saga worker: --db: expected sqlite:<file>')
  })
})

describe('breakwater saga worker: --metrics-host', () => {
  it('is refused without --metrics-port (no server starts, it would be ignored)', async () => {
    const result = await run(['--module', 'x.js', '--metrics-host', '0.0.0.0'], {})
    expect(result.code).toBe(2)
    expect(result.stderr).toContain(
      'breakwater saga worker: --metrics-host applies only with --metrics-port',
    )
  })
})

describe('breakwater saga worker: a signal while the module loads', () => {
  it('ends the command cleanly (exit 0) before anything starts', async () => {
    // The module's top level waits (an app that connects at import, a slow disk): a SIGTERM
    // then must be handled as at any other time of the start, not left to its default action
    // (the process killed by the signal) or ignored (the worker starting anyway).
    const dir = mkdtempSync(join(tmpdir(), 'breakwater-worker-module-'))
    const module = join(dir, 'slow-sagas.mjs')
    writeFileSync(
      module,
      'await new Promise((resolve) => { globalThis.__breakwaterReleaseModule = resolve })\nexport const sagas = [{}]\n',
    )
    const signals = new EventEmitter()
    const released = globalThis as { __breakwaterReleaseModule?: () => void }
    let stdout = ''
    let stderr = ''
    try {
      const running = sagaWorkerCommand(
        ['--module', module, '--db', `sqlite:${join(dir, 'none.db')}`],
        {
          stdout: { write: (t: string) => (stdout += t) },
          stderr: { write: (t: string) => (stderr += t) },
          env: {},
          signals,
          exit: () => {},
        },
      )
      await until(() => released.__breakwaterReleaseModule !== undefined, 'the module to load')
      signals.emit('SIGTERM', 'SIGTERM')
      released.__breakwaterReleaseModule!()
      expect(await running).toBe(0)
      expect(stderr).toBe('')
      expect(stdout).not.toContain('saga worker started')
      expect(signals.listenerCount('SIGTERM')).toBe(0)
    } finally {
      delete released.__breakwaterReleaseModule
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
