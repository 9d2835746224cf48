// sagaWorkerCommand in-process: a bad --db names where the URL came from.
import { EventEmitter } from 'node:events'
import { describe, expect, it } from 'vitest'
import { sagaWorkerCommand } from '../../src/cli/saga-worker.js'

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
