// An admin token kept in a file that holds no usable token (empty, whitespace only, or a
// whitespace inside that no `Authorization: Bearer` header can carry) made every /admin/
// request fail with 401 at runtime, while `--check` called the file valid. Both `--check` and
// the start now refuse it, naming the setting, the file and the rule.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { proxyCommand } from '../../../src/cli/proxy.js'
import { BreakwaterError } from '../../../src/core/errors.js'
import { createJsonLogger } from '../../../src/observability/index.js'
import { ConfigInvalidError, startProxy } from '../../../src/proxy/index.js'
import { captureLog } from '../runtime/helpers.js'
import { expectStartRefused } from './problems.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-admin-token-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

function write(name: string, text: string): string {
  const file = join(dir, name)
  writeFileSync(file, text)
  return file
}

function configWith(tokenFile: string): string {
  return `services: { a: { endpoints: [http://127.0.0.1:1] } }
listeners: [{ name: out, role: ambassador, port: 0 }]
admin: { port: 0, token: { file: ${tokenFile} } }
`
}

const unusable: [string, string, string][] = [
  ['empty', '', 'empty'],
  ['whitespace only', ' \n\t\n', 'empty'],
  ['a space inside', 'two words-0123456789\n', 'a character outside visible ASCII inside'],
  // node reads header values as latin1: a UTF-8 token in the header never equals the file's.
  ['a non-ASCII character', 'pässwörd-0123456789\n', 'a character outside visible ASCII inside'],
]

describe('an admin token file without a usable token', () => {
  it.each(unusable)(
    '--check refuses one %s, naming the setting, the file and the rule',
    async (name, text, rule) => {
      const token = write(`token-${name}`, text)
      const config = write(`config-${name}.yaml`, configWith(token))
      const out = captureLog()
      const err = captureLog()
      expect(
        await proxyCommand(['--config', config, '--check'], { stdout: out, stderr: err }),
      ).toBe(1)
      expect(err.text()).toContain(`admin.token.file: ${token}: ${rule}`)
      expect(err.text()).toContain('every /admin/ request would be refused')
    },
  )

  it('--check takes a file holding a token and a trailing newline', async () => {
    const token = write('token-good', 'a-long-enough-admin-token\n')
    const out = captureLog()
    const err = captureLog()
    const config = write('config-good.yaml', configWith(token))
    expect(await proxyCommand(['--config', config, '--check'], { stdout: out, stderr: err })).toBe(
      0,
    )
  })

  it.each(unusable)(
    'startProxy refuses one %s with CONFIG_INVALID before it binds anything',
    async (name, text, rule) => {
      const token = write(`start-token-${name}`, text)
      const config = write(`start-config-${name}.yaml`, configWith(token))
      const log = captureLog()
      const error = await startProxy({
        config: { file: config },
        logger: createJsonLogger({ output: log }),
        watch: false,
      }).then(
        (proxy) => proxy.close().then(() => undefined),
        (e: unknown) => e,
      )
      // Refused before anything was bound or logged as started.
      expect(log.text()).not.toContain('proxy started')
      expect(error).toBeInstanceOf(ConfigInvalidError)
      expect(BreakwaterError.is(error) && error.code).toBe('CONFIG_INVALID')
      expect((error as ConfigInvalidError).problems).toMatchObject([{ path: 'admin.token.file' }])
      expect((error as Error).message).toContain(`admin.token.file: ${token}: ${rule}`)
    },
  )

  // Once only logged at start (every /admin/ request was then refused): now refused as a
  // file's token is (env-secrets.test.ts covers --check, a reload and the other settings).
  it.each([
    ['one no header can carry', 'two words-0123456789', 'a character outside visible ASCII inside'],
    ['none', undefined, 'not set'],
  ])(
    'a token from the environment: startProxy refuses %s, naming the variable',
    async (_, token, rule) => {
      const log = captureLog()
      const error = await startProxy({
        config: `services: { a: { endpoints: [http://127.0.0.1:1] } }
listeners: [{ name: out, role: ambassador, port: 0 }]
admin: { port: 0, token: { env: BW_ADMIN } }
`,
        logger: createJsonLogger({ output: log }),
        watch: false,
        env: token === undefined ? {} : { BW_ADMIN: token },
      }).then(
        (proxy) => proxy.close().then(() => undefined),
        (e: unknown) => e,
      )
      expect(log.text()).not.toContain('proxy started')
      expect(error).toBeInstanceOf(ConfigInvalidError)
      expect((error as Error).message).toContain(
        `admin.token.env: environment variable BW_ADMIN: ${rule}`,
      )
      expect((error as Error).message).not.toContain('words-0123456789')
    },
  )

  it('breakwater proxy refuses to start on one, with one process or with workers', async () => {
    const token = write('cli-token', '   \n')
    const config = write('cli-config.yaml', configWith(token))
    await expectStartRefused(config, `admin.token.file: ${token}: empty`)
  })
})
