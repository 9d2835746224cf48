// `npm run test:chaos` runs the heavy tests at the full scale (BREAKWATER_SCALE=full, see
// test/support/scale.ts) by naming them in its vitest filter. A test file that sizes itself with
// scaled() but that no filter names ran at full scale nowhere: its full-scale figures were never
// checked (seven such files were missed before this test). This keeps the script and the files in
// step.
import { readdirSync, readFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const root = fileURLToPath(new URL('../..', import.meta.url))

function testFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return entry.name === 'node_modules' ? [] : testFiles(path)
    return entry.name.endsWith('.test.ts') ? [relative(root, path)] : []
  })
}

// The filters after `vitest run` in the test:chaos script (vitest matches each as a substring
// of the file's path).
function chaosFilters(): string[] {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
    scripts: Record<string, string>
  }
  const script = pkg.scripts['test:chaos'] ?? ''
  const match = /BREAKWATER_SCALE=full vitest run (.+)$/.exec(script)
  return match === null ? [] : match[1]!.trim().split(/\s+/)
}

describe('npm run test:chaos', () => {
  it('sets the full scale and runs vitest on filters', () => {
    expect(chaosFilters().length).toBeGreaterThan(0)
  })

  it('runs every test file that sizes itself with scaled() or fullScale', () => {
    const filters = chaosFilters()
    const sized = testFiles(join(root, 'test')).filter((file) =>
      /\b(scaled|fullScale)\b/.test(readFileSync(join(root, file), 'utf8')),
    )
    expect(sized.length).toBeGreaterThan(5)
    const missed = sized.filter(
      (file) =>
        file !== 'test/suite/chaos-script.test.ts' && !filters.some((f) => file.includes(f)),
    )
    expect(missed).toEqual([])
  })
})
