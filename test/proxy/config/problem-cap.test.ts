// A file with thousands of problems made a message of hundreds of KB (2,000 unknown keys:
// about 170 KB), printed by --check, logged by a refused reload and returned by the admin API.
// The first 50 problems are listed, then how many more there are; the count is kept.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import {
  ConfigInvalidError,
  loadProxyConfig,
  parseProxyConfig,
} from '../../../src/proxy/config/index.js'

const listeners = 'listeners: [{ name: out, role: ambassador, port: 15001 }]\n'

/** A file with `count` unknown keys in one service, each on a line of its own. */
function unknownKeys(count: number): string {
  const keys = Array.from({ length: count }, (_, i) => `    unknown${i}: 1\n`).join('')
  return `services:\n  app:\n    endpoints: [http://127.0.0.1:3000]\n${keys}${listeners}`
}

function refusal(yaml: string): ConfigInvalidError {
  try {
    parseProxyConfig(yaml, 'test.yaml')
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigInvalidError)
    return error as ConfigInvalidError
  }
  throw new Error('expected the config to be rejected')
}

const dir = mkdtempSync(join(tmpdir(), 'bw-problem-cap-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('a config with many problems', () => {
  it('lists the first 50, then how many more, and keeps the count', () => {
    const error = refusal(unknownKeys(2_000))
    expect(error.problemCount).toBe(2_000)
    const lines = error.message.split('\n')
    expect(lines[0]).toBe('invalid proxy config test.yaml (2000 problems):')
    expect(lines.slice(1, 51)).toEqual(
      Array.from(
        { length: 50 },
        (_, i) =>
          `  services.app.unknown${i}: unknown key (not part of the proxy config) (line ${i + 4}, column 5)`,
      ),
    )
    expect(lines.slice(51)).toEqual(['  ... and 1950 more problems'])
    expect(error.message.length).toBeLessThan(5_000)
  })

  it('holds the same list as data, ending with one that says how many are left out', () => {
    const error = refusal(unknownKeys(2_000))
    expect(error.problems).toHaveLength(51)
    expect(error.problems[49]?.path).toBe('services.app.unknown49')
    expect(error.problems[50]).toEqual({
      path: '(more)',
      message: '... and 1950 more problems',
      line: undefined,
      column: undefined,
    })
  })

  it('keeps the count when made again from that list (a worker refusal sent to the primary)', () => {
    const error = refusal(unknownKeys(2_000))
    const again = new ConfigInvalidError('reload', error.problems)
    expect(again.problemCount).toBe(2_000)
    expect(again.problems).toEqual(error.problems)
    expect(again.message).toBe(error.message.replace('test.yaml', 'reload'))
  })

  it.each([
    [
      50,
      '  services.app.unknown49: unknown key (not part of the proxy config) (line 53, column 5)',
    ],
    [51, '  ... and 1 more problem'],
  ])('with %i problems ends its list with %s', (count, last) => {
    const error = refusal(unknownKeys(count))
    expect(error.problemCount).toBe(count)
    expect(error.problems).toHaveLength(count)
    const lines = error.message.split('\n')
    expect(lines).toHaveLength(count + 1)
    expect(lines.at(-1)).toBe(last)
  })

  it('is capped the same when read from a file', async () => {
    const file = join(dir, 'many.yaml')
    writeFileSync(file, unknownKeys(2_000))
    const error = await loadProxyConfig(file).then(
      () => undefined,
      (e: unknown) => e as ConfigInvalidError,
    )
    expect(error?.problemCount).toBe(2_000)
    expect(error?.message.split('\n').at(-1)).toBe('  ... and 1950 more problems')
  })
})
