// What `breakwater proxy --check` prints for a file with many problems, or a long value: the
// whole list (2,000 unknown keys: about 170 KB) and every file path in full. It lists the
// first 50 problems and then how many more there are, and a path as the loader repeats one.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { proxyCommand } from '../../src/cli/proxy.js'
import { runCaptured } from './captured.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-check-output-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const listeners = 'listeners: [{ name: out, role: ambassador, port: 0 }]\n'

async function check(name: string, yaml: string) {
  const file = join(dir, name)
  writeFileSync(file, yaml)
  return { file, ...(await runCaptured(proxyCommand, ['--config', file, '--check'])) }
}

describe('proxy --check output', () => {
  it('lists the first 50 problems of an invalid file, then how many more', async () => {
    const keys = Array.from({ length: 2_000 }, (_, i) => `    unknown${i}: 1\n`).join('')
    const { file, code, stdout, stderr } = await check(
      'many.yaml',
      `services:\n  app:\n    endpoints: [http://127.0.0.1:3000]\n${keys}${listeners}`,
    )
    expect(code).toBe(1)
    expect(stdout).toBe('')
    const lines = stderr.trimEnd().split('\n')
    expect(lines[0]).toBe(`invalid proxy config ${file} (2000 problems):`)
    expect(lines).toHaveLength(52)
    expect(lines[50]).toContain('services.app.unknown49: unknown key')
    expect(lines[51]).toBe('  ... and 1950 more problems')
  })

  it('lists the first 50 files a valid config names that cannot be used, then how many more', async () => {
    const services = Array.from(
      { length: 60 },
      (_, i) =>
        `  s${i}: { endpoints: [http://127.0.0.1:3000], tls: { caFile: ${join(dir, `missing-${i}.pem`)} } }\n`,
    ).join('')
    const { file, code, stderr } = await check('files.yaml', `services:\n${services}${listeners}`)
    expect(code).toBe(1)
    const lines = stderr.trimEnd().split('\n')
    expect(lines[0]).toBe(`${file}: the config is valid, but 60 files it refers to cannot be used:`)
    expect(lines).toHaveLength(52)
    expect(lines[50]).toBe(
      `  services.s49.tls.caFile: ${join(dir, 'missing-49.pem')}: no such file`,
    )
    expect(lines[51]).toBe('  ... and 10 more problems')
  })

  it('repeats a long file path as the loader repeats a value: its start and its length', async () => {
    const long = `/${'p'.repeat(99_999)}`
    const { code, stderr } = await check(
      'long.yaml',
      `services:\n  app: { endpoints: [http://127.0.0.1:3000], tls: { caFile: "${long}" } }\n${listeners}`,
    )
    expect(code).toBe(1)
    expect(stderr).toContain(
      `  services.app.tls.caFile: /${'p'.repeat(99)}… (100000 characters): ENAMETOOLONG`,
    )
    expect(stderr.length).toBeLessThan(1_000)
  })
})
