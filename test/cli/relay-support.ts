// Helpers of the `breakwater relay` tests: the command run in-process, and an encrypted copy of
// a test client key.
import { createPrivateKey } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { relayCommand } from '../../src/cli/relay.js'
import type { TestCerts } from '../proxy/support/certs.js'

/** What an in-process `breakwater relay` printed, and its exit code. */
export interface RelayRun {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
  /** stdout then stderr. */
  readonly all: string
}

/**
 * Runs `relayCommand(args)` in-process with `env` as its whole environment and signals nobody
 * sends, collecting what it prints: for commands that end by themselves (bad arguments, a
 * failed start).
 */
export async function runRelay(
  args: string[],
  env: Record<string, string> = {},
): Promise<RelayRun> {
  let stdout = ''
  let stderr = ''
  const code = await relayCommand(args, {
    stdout: { write: (t: string) => (stdout += t) },
    stderr: { write: (t: string) => (stderr += t) },
    env,
    signals: new EventEmitter(),
  })
  return { code, stdout, stderr, all: stdout + stderr }
}

/** Writes the test client key encrypted with `passphrase` (PKCS #8, AES-256) and returns its path. */
export function writeEncryptedClientKey(certs: TestCerts, passphrase: string): string {
  const file = join(certs.dir, 'client-key-encrypted.pem')
  const pem = createPrivateKey(certs.client.key).export({
    type: 'pkcs8',
    format: 'pem',
    cipher: 'aes-256-cbc',
    passphrase,
  })
  writeFileSync(file, pem)
  return file
}
