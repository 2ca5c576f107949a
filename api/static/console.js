// The audit console's only script (served from the appliance; no inline script is allowed).
// Times are shown in UTC; hovering one shows it in the browser's own time zone.
// The "Clear" button empties the filter form and shows the whole stream again.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when.getTime())) {
      el.title = when.toLocaleString();
    }
  });
  document.querySelectorAll("button[data-clear]").forEach(function (button) {
    button.addEventListener("click", function () {
      var form = document.getElementById(button.getAttribute("data-clear"));
      if (!form) { return; }
      form.querySelectorAll("input, select").forEach(function (field) { field.value = ""; });
      form.submit();
    });
  });
});
