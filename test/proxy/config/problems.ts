// Shared by the config tests that only need the loader's refusal text, or what
// `breakwater proxy --check` says of a file.
import { writeFileSync } from 'node:fs'
import { expect } from 'vitest'
import { proxyCommand } from '../../../src/cli/proxy.js'
import { ConfigInvalidError, parseProxyConfig } from '../../../src/proxy/config/index.js'
import { spawnCli } from '../../process/cli-process.js'
import { captureLog } from '../runtime/helpers.js'

/**
 * Parses `yaml` and returns the message of the ConfigInvalidError it must be refused with; fails
 * the test if the file is accepted or refused with any other error.
 */
export function problemsOf(yaml: string): string {
  try {
    parseProxyConfig(yaml, 'test.yaml')
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigInvalidError)
    return (error as Error).message
  }
  throw new Error('expected the config to be rejected')
}

/** Writes `yaml` to `file`, runs `breakwater proxy --check` on it, and returns its exit code and stderr. */
export async function checkFile(
  file: string,
  yaml: string,
): Promise<{ code: number; text: string }> {
  writeFileSync(file, yaml)
  const err = captureLog()
  const code = await proxyCommand(['--config', file, '--check'], {
    stdout: captureLog(),
    stderr: err,
  })
  return { code, text: err.text() }
}

/**
 * Runs `breakwater proxy --config <file>` with one process and with two workers, and expects
 * each to exit 2 before it starts, saying `said` on stderr without a stack.
 */
export async function expectStartRefused(file: string, said: string): Promise<void> {
  for (const workers of ['1', '2']) {
    const cli = spawnCli(['proxy', '--config', file, '--workers', workers])
    try {
      // Bounded: a proxy that is not refused starts and runs.
      const exited = await Promise.race([
        cli.exited,
        cli
          .waitForLine((l) => l.msg === 'proxy started' || l.msg === 'starting workers', 'a start')
          .then(() => undefined),
      ])
      expect(exited, cli.stdout()).toEqual({ code: 2, signal: null })
      expect(cli.stderr()).toContain(said)
      expect(cli.stderr()).not.toMatch(/\n\s+at /)
    } finally {
      cli.kill()
    }
  }
}
