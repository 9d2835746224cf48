// `breakwater proxy`'s numeric flags given a negative number: the value was there, but the
// parser took any word starting with `-` for the next flag and said "--workers needs a value",
// where every other command names the range it takes and the value it got.
import { describe, expect, it } from 'vitest'
import { proxyCommand } from '../../src/cli/proxy.js'
import { runCaptured } from './captured.js'

describe('proxy given a negative number', () => {
  it.each([
    [['--workers', '-1'], '--workers: expected an integer in [1, 256], got "-1"'],
    [['--start-timeout', '-5'], '--start-timeout: expected a positive integer of milliseconds'],
  ])('%j names the flag, its range and the value, exit 2', async (args, expected) => {
    const result = await runCaptured(proxyCommand, ['--config', 'proxy.yaml', ...args])
    expect(result.code).toBe(2)
    expect(result.stderr).toContain(`breakwater proxy: ${expected}`)
    expect(result.stderr).not.toContain('needs a value')
  })

  it('still finds a flag where a value was wanted', async () => {
    for (const args of [
      ['--config', '--check'],
      ['--config', '-c', 'proxy.yaml'],
    ]) {
      const result = await runCaptured(proxyCommand, args)
      expect(result.code).toBe(2)
      expect(result.stderr).toContain('breakwater proxy: --config needs a value')
    }
  })
})
