// `--check` parsed idempotency.url but never looked at the path of a sqlite: URL, so a URL
// naming a folder, or a path under a regular file, was called valid and the start then
// refused it (the SQLite driver's prepareFolder) with exit 1. --check must not create what the
// start would: folders still missing are fine and are left missing.

import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { checkFile } from './problems.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-check-store-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const folder = join(dir, 'a-folder')
mkdirSync(folder)
const file = join(dir, 'a-file')
writeFileSync(file, 'not a folder\n')

function check(url: string): Promise<{ code: number; text: string }> {
  return checkFile(
    join(dir, 'config.yaml'),
    `services: { a: { endpoints: [http://127.0.0.1:1] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\nidempotency: { url: ${JSON.stringify(url)} }\n`,
  )
}

describe('--check and the path of a sqlite: idempotency store', () => {
  it('refuses a folder given as the database file, naming the setting and the path', async () => {
    const { code, text } = await check(`sqlite:${folder}`)
    expect(code).toBe(1)
    expect(text).toContain(`idempotency.url: ${folder}: a folder, not a file`)
  })

  it.each([
    ['directly under', 'x.db'],
    ['further under', 'sub/deeper/x.db'],
  ])('refuses a path %s a regular file, naming that file', async (_, rest) => {
    const { code, text } = await check(`sqlite:${file}/${rest}`)
    expect(code).toBe(1)
    expect(text).toContain(`idempotency.url: ${file}/${rest}: `)
    expect(text).toContain(`${file} is a file, not a folder`)
    expect(existsSync(file)).toBe(true)
  })

  it('takes a path whose missing folders the start would create, and creates nothing', async () => {
    const target = join(dir, 'new', 'sub', 'x.db')
    const { code, text } = await check(`sqlite:${target}`)
    expect(text).toBe('')
    expect(code).toBe(0)
    expect(existsSync(join(dir, 'new'))).toBe(false)
  })

  it('takes an existing database file and an in-memory one', async () => {
    const db = join(dir, 'existing.db')
    writeFileSync(db, '')
    expect((await check(`sqlite:${db}`)).code).toBe(0)
    expect((await check('sqlite::memory:')).code).toBe(0)
    expect((await check('memory')).code).toBe(0)
  })
})
