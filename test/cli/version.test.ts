// `breakwater --version`: the version of the installed package, read from its package.json.
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { runCli } from '../process/cli-process.js'

const { version } = JSON.parse(
  readFileSync(new URL('../../package.json', import.meta.url), 'utf8'),
) as { version: string }

describe('breakwater --version', () => {
  it.each([[['--version']], [['-V']], [['version']]])(
    '%j prints the package version on stdout, exit 0',
    async (args) => {
      const result = await runCli(args)
      expect(result.stderr).toBe('')
      expect(result.code).toBe(0)
      expect(result.stdout).toBe(`${version}\n`)
    },
  )

  it('is listed in the usage', async () => {
    const result = await runCli(['--help'])
    expect(result.stdout).toContain('--version')
  })

  it('refuses arguments to the version command, exit 2', async () => {
    const result = await runCli(['version', '--json'])
    expect(result.code).toBe(2)
    expect(result.stderr).toContain('usage: breakwater')
  })
})
