// watchFileContent against the real file system: the ways files get replaced in practice.

import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { watchFileContent } from '../../../src/proxy/upstream/file-watch.js'
import { eventually } from './helpers.js'

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup()
})

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'breakwater-watch-'))
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function watchAll(path: string, initial: string | undefined) {
  const seen: string[] = []
  const errors: unknown[] = []
  const watch = watchFileContent(
    path,
    initial === undefined ? undefined : Buffer.from(initial),
    (content) => seen.push(content.toString('utf8')),
    (error) => errors.push(error),
  )
  cleanups.push(() => watch.close())
  return { seen, errors }
}

describe('watchFileContent', () => {
  it('sees a file replaced by rename', async () => {
    const dir = tempDir()
    const path = join(dir, 'token')
    writeFileSync(path, 'one')
    const { seen } = watchAll(path, 'one')
    writeFileSync(join(dir, 'token.tmp'), 'two')
    renameSync(join(dir, 'token.tmp'), path)
    await eventually(() => seen.length === 1)
    expect(seen).toEqual(['two'])
  })

  it('sees a Kubernetes secret or ConfigMap update (the ..data symlink swapped, the file name untouched)', async () => {
    // The kubelet's atomic writer: token -> ..data/token, ..data -> ..<timestamp>; an update
    // writes a new timestamped folder, points ..data_tmp at it and renames it over ..data.
    const dir = tempDir()
    mkdirSync(join(dir, '..v1'))
    writeFileSync(join(dir, '..v1', 'token'), 'one')
    symlinkSync('..v1', join(dir, '..data'))
    symlinkSync(join('..data', 'token'), join(dir, 'token'))
    const path = join(dir, 'token')
    const { seen, errors } = watchAll(path, 'one')
    mkdirSync(join(dir, '..v2'))
    writeFileSync(join(dir, '..v2', 'token'), 'two')
    symlinkSync('..v2', join(dir, '..data_tmp'))
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'))
    rmSync(join(dir, '..v1'), { recursive: true })
    await eventually(() => seen.length === 1)
    expect(seen).toEqual(['two'])
    expect(errors).toEqual([])
  })
})
