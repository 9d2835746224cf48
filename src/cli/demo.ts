/** `breakwater demo`: placeholder until the policy scenarios land. */
export async function demoCommand(_args: string[]): Promise<number> {
  process.stderr.write('breakwater demo: not built yet\n')
  return 1
}
