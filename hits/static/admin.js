// A little help on top of the server-rendered page: hit times in the browser's time zone
// (the UTC time stays in the tooltip), and a click on a name filters by it.
(function () {
  for (const el of document.querySelectorAll("time[datetime]")) {
    const d = new Date(el.getAttribute("datetime"));
    if (!isNaN(d)) {
      el.title = el.textContent + " (UTC)";
      el.textContent = d.toLocaleString();
    }
  }
  const form = document.querySelector("form.filters");
  for (const el of document.querySelectorAll("td.name[data-name]")) {
    el.style.cursor = "pointer";
    el.title = "filter by this name";
    el.addEventListener("click", () => {
      if (!form) return;
      form.elements["name"].value = el.dataset.name;
      form.submit();
    });
  }
})();
