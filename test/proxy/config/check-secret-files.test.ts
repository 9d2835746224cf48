// `--check` listed a service credential file that is missing, but called one that is empty (or
// holds a line break inside) valid, although the proxy then sends every request to the
// service without the credential (logged once as a warning at start).

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { checkFile } from './problems.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-check-secrets-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

function write(name: string, text: string): string {
  const file = join(dir, name)
  writeFileSync(file, text)
  return file
}

function check(auth: string): Promise<{ code: number; text: string }> {
  return checkFile(
    join(dir, 'config.yaml'),
    `services: { a: { endpoints: [http://127.0.0.1:1], auth: ${auth} } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n`,
  )
}

describe('--check and service credential files', () => {
  it.each([
    ['empty', '', 'empty (or whitespace only)'],
    ['whitespace only', '  \n', 'empty (or whitespace only)'],
    ['a line break inside', 'abc\ndef\n', 'a line break or control character inside'],
  ])('refuses one %s, naming the setting and the file', async (name, text, rule) => {
    const secret = write(`secret-${name}`, text)
    const bearer = await check(`{ bearer: { file: ${secret} } }`)
    expect(bearer.code).toBe(1)
    expect(bearer.text).toContain(`services.a.auth.bearer.file: ${secret}: ${rule}`)
    expect(bearer.text).toContain('requests would go without the credential')
    const apiKey = await check(`{ apiKey: { header: x-api-key, file: ${secret} } }`)
    expect(apiKey.code).toBe(1)
    expect(apiKey.text).toContain(`services.a.auth.apiKey.file: ${secret}: ${rule}`)
  })

  it('takes one holding a credential and a trailing newline', async () => {
    const secret = write('secret-good', 'a-credential\n')
    expect((await check(`{ bearer: { file: ${secret} } }`)).code).toBe(0)
  })
})
