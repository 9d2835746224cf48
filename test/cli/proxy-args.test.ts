// `breakwater proxy`'s numeric flags given a negative number: the value was there, but the
// parser took any word starting with `-` for the next flag and said "--workers needs a value",
// where every other command names the range it takes and the value it got.
import { describe, expect, it } from 'vitest'
import { proxyCommand } from '../../src/cli/proxy.js'
import { runCaptured } from './captured.js'

describe('proxy given a negative number', () => {
  it.each([
    [['--workers', '-1'], '--workers must be an integer from 1 to 256, got "-1"'],
    [
      ['--start-timeout', '-5'],
      '--start-timeout must be an integer of milliseconds from 1 to 2147483647, got "-5"',
    ],
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

describe('proxy given a number out of range or not a number', () => {
  // The proxy said 'expected an integer in [1, 256]' where relay, saga worker, outbox and saga
  // say '--limit must be an integer from 1 to 100000': one form for every command's flags.
  it.each([
    [['--workers', '0'], '--workers must be an integer from 1 to 256, got "0"'],
    [['--workers', '257'], '--workers must be an integer from 1 to 256, got "257"'],
    [['--workers=2x'], '--workers must be an integer from 1 to 256, got "2x"'],
    // A control character in the value is shown escaped, on one line, as every command shows it.
    [['--workers', '1\u001b[2J'], '--workers must be an integer from 1 to 256, got "1\\u001b[2J"'],
    [
      ['--start-timeout', '0'],
      '--start-timeout must be an integer of milliseconds from 1 to 2147483647, got "0"',
    ],
    [
      ['--log-level', 'loud'],
      '--log-level must be one of debug, info, warn, error, silent, got "loud"',
    ],
  ])('%j is named in the common form, exit 2', async (args, expected) => {
    const result = await runCaptured(proxyCommand, ['--config', 'proxy.yaml', ...args])
    expect(result.code).toBe(2)
    expect(result.stderr.split('\n')[0]).toBe(`breakwater proxy: ${expected}`)
  })
})
