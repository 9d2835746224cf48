// `breakwater proxy` prints its usage for --help (or -h) wherever it stands, as every other
// command does (wantsHelp): asking for help after a flag the reader got wrong, or in place of
// a value, must not answer with that flag's error.
import { describe, expect, it } from 'vitest'
import { proxyCommand } from '../../src/cli/proxy.js'

async function run(args: string[]) {
  let out = ''
  let err = ''
  const code = await proxyCommand(args, {
    stdout: { write: (t: string) => (out += t) },
    stderr: { write: (t: string) => (err += t) },
  })
  return { code, out, err }
}

describe('breakwater proxy --help', () => {
  it.each([
    [['--help']],
    [['--bogus', '--help']],
    [['--config', '--help']],
    [['--workers', '0', '-h']],
    [['help']],
  ])('%j prints the usage on stdout, exit 0', async (args) => {
    const { code, out, err } = await run(args)
    expect(err).toBe('')
    expect(code).toBe(0)
    expect(out).toContain('usage: breakwater proxy --config <file.yaml>')
  })
})
