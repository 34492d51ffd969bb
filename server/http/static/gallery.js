// Finished images: each with a before/after slider, a download link, "use as input" and the
// seed that made it.

const EXT = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };

export class Gallery {
  constructor(root, template, { onReuse }) {
    this.root = root;
    this.template = template;
    this.onReuse = onReuse;
    this.urls = [];
  }

  /** Remove the previous run's results (and free their blob: URLs). */
  clear() {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
    this.root.replaceChildren();
  }

  /** Add one result. blob: the image as the server encoded it; before: blob: URL of the input;
   * seed: the seed that made it (null for models without one); index: 0-based. */
  add({ blob, before, seed, index }) {
    const url = URL.createObjectURL(blob);
    this.urls.push(url);
    const node = this.template.content.firstElementChild.cloneNode(true);
    const name = `edited-${seed ?? index + 1}.${EXT[blob.type] || "png"}`;
    const after = node.querySelector(".after");
    after.src = url;
    after.alt = `Result ${index + 1}${seed == null ? "" : `, seed ${seed}`}`;
    node.dataset.seed = seed ?? "";
    const beforeImg = node.querySelector(".before");
    beforeImg.src = before;
    beforeImg.alt = "The input image, for comparison";
    const range = node.querySelector(".compare-range");
    range.setAttribute("aria-label", `Compare result ${index + 1} with the input`);
    const compare = node.querySelector(".compare");
    const show = () => {
      compare.style.setProperty("--split", `${range.value}%`);
      compare.style.setProperty("--seam", range.value > 0 && range.value < 100 ? "1" : "0");
    };
    range.addEventListener("input", show);
    show();
    node.querySelector(".seed").textContent =
      seed == null ? `Result ${index + 1}` : `Result ${index + 1} · seed ${seed}`;
    const link = node.querySelector(".download");
    link.href = url;
    link.download = name;
    link.setAttribute("aria-label", `Download result ${index + 1} as ${name}`);
    const reuse = node.querySelector(".reuse");
    reuse.setAttribute("aria-label", `Use result ${index + 1} as the input image`);
    reuse.addEventListener("click", () => this.onReuse(blob, name));
    node.dataset.index = String(index);
    // completed events may come in any order: keep the gallery in image order
    const next = [...this.root.children].find((el) => Number(el.dataset.index) > index);
    this.root.insertBefore(node, next || null);
    return node;
  }
}
