// core/built-in-kind read globalThis.Headers, FormData, Blob and URLSearchParams when it was
// imported. In Node 20 those globals are lazy getters: the first read loads Node's bundled fetch
// (undici), about 35 ms of every CLI start and of every program importing breakwater, even one
// that never validates anything but plain objects. They are now read the first time a value
// that is neither a plain object nor a slotted built-in is looked at. A child process traps the
// four globals before importing the module, so the read is seen, not timed.
import { execFileSync } from 'node:child_process'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { describe, expect, it } from 'vitest'

const builtInKindUrl = pathToFileURL(
  fileURLToPath(new URL('../../src/core/built-in-kind.ts', import.meta.url)),
).href

/** Runs `body` (after the import of built-in-kind.ts as `m`) in a child; the globals it read. */
function globalsReadBy(body: string): string[] {
  const script = `
    const read = []
    for (const name of ['Headers', 'FormData', 'Blob', 'URLSearchParams']) {
      const descriptor = Object.getOwnPropertyDescriptor(globalThis, name)
      Object.defineProperty(globalThis, name, {
        configurable: true,
        get() { read.push(name); return descriptor.get ? descriptor.get.call(globalThis) : descriptor.value },
      })
    }
    const m = await import(${JSON.stringify(builtInKindUrl)})
    ${body}
    process.stdout.write(JSON.stringify([...new Set(read)].sort()))
  `
  const out = execFileSync(
    process.execPath,
    ['--import', 'tsx', '--input-type=module', '-e', script],
    {
      encoding: 'utf8',
    },
  )
  return JSON.parse(out) as string[]
}

describe('builtInKind and the lazy web globals', () => {
  it('reads none of them at import, nor for plain objects and slotted built-ins', () => {
    const read = globalsReadBy(`
      if (m.builtInKind({ a: 1 }) !== undefined) throw new Error('plain object')
      if (m.builtInKind(Object.create(null)) !== undefined) throw new Error('null prototype')
      if (m.builtInKind(new Map()) !== 'a Map') throw new Error('Map')
    `)
    expect(read).toEqual([])
  })

  it('still names a Headers, and a user class instance is still not a built-in', () => {
    const read = globalsReadBy(`
      class Options { constructor() { this.a = 1 } }
      if (m.builtInKind(new Options()) !== undefined) throw new Error('user class')
      if (m.builtInKind(new Headers()) !== 'a Headers') throw new Error('Headers')
      if (m.builtInKind(new URLSearchParams('a=1')) !== 'a URLSearchParams') throw new Error('URLSearchParams')
    `)
    // Read once they are needed, each once.
    expect(read).toEqual(['Blob', 'FormData', 'Headers', 'URLSearchParams'])
  })
})
